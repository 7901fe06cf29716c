"""fastsync.media"""
