"""fastsync.face"""
