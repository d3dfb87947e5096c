"""Deployment: ONNX export of the encoders (fp32 and int8) and torch.compile for inference."""
