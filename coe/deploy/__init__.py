"""Deploying a registry on a cluster.

``coe.deploy.plan`` works out, without importing Ray, what a deployment consists of (one ingress, one
deployment per managed expert, their replicas and resources). ``coe.deploy.ray`` turns that plan into
Ray Serve applications; it is the only module in CoE that imports Ray (the optional ``ray`` extra).
"""
