"""fastsync.models"""
