"""kfx serve: a TensorFlow-Serving-compatible model server (gRPC + REST) and its Python client.

Modules: server (wiring, flags), manager (versions, policies, hot reload), servable (one loaded
SavedModel), inference (Predict/Classify/Regress/MultiInference/metadata semantics), batching,
grpc_service, rest, metrics, protos (TF Serving config protos), tensors, errors, client, cli.
"""
