"""The bone-zoo Gradio demo (``python -m demo``)."""
