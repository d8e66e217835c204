"""topkattn.evaluation"""
