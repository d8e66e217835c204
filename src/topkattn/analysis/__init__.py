"""topkattn.analysis"""
