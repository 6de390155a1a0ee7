"""Built-in backbone families. Importing this package registers every builder in it, and the source factories."""

from zoo.backbones import _common, convnext, densenet, efficientnet, mobilenet, regnet, resnet, vit  # noqa: F401
