"""saelab.pipeline"""
