"""Selection calls to profile with ncu on the device (32 x 128k fp32 scores, top-2048).

Per-instruction stall samples and execution counts of one kernel (as used for the finish on
the H100 on 2026-11-23; summarise the CSV with scripts/ncu_sass_summary.py):

    ncu --clock-control none --kernel-name regex:_finish_kernel --launch-skip 2 --launch-count 1 \\
        --set full --import-source yes -o /tmp/sel -f python3 scripts/device_ncu_select.py
    ncu -i /tmp/sel.ncu-rep --page source --csv --print-source sass > $OUT/sass.csv
"""
import torch

import topkattn.ops.select.triton_select as ts

s = torch.randn(32, 131072, device="cuda")
for _ in range(4):
    ts.select_rows(s, k=2048)
torch.cuda.synchronize()
