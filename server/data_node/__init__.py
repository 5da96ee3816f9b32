"""The data node: serves data_tools views and pipelines to remote trainers over gRPC."""
