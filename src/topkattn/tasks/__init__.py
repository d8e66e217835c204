"""topkattn.tasks"""
