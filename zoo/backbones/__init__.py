"""Built-in backbone families. Importing this package registers every builder in it."""

from zoo.backbones import convnext, densenet, efficientnet, mobilenet, regnet, resnet, vit  # noqa: F401
