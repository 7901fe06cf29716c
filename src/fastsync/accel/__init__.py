"""fastsync.accel"""
