"""Graph passes that turn a model into its analog simulation and back.
"""
