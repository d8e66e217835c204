"""topkattn.integrations"""
