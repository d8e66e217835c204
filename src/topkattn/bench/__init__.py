"""topkattn.bench"""
