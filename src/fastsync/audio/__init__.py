"""fastsync.audio"""
