"""topkattn.train"""
