"""The framework-neutral vocabulary of layer kinds. Each backend classifies its layers
into these; composites map kinds to rules, so one composite serves torch and Keras."""
from __future__ import annotations

KINDS = {
    "conv": "convolution (incl. depthwise / grouped): torch ConvNd, Keras ConvND / DepthwiseConv2D",
    "conv-transpose": "transposed convolution: torch ConvTransposeNd, Keras ConvNDTranspose",
    "dense": "fully connected: torch Linear, Keras Dense",
    "batchnorm": "batch normalisation (merged into the linear layer before it by MergeBatchNorm)",
    "relu": "ReLU-like activation (ReLU, ReLU6, LeakyReLU): guided backprop / deconvnet apply here",
    "activation": "other elementwise activation (SiLU, GELU, hard-swish, sigmoid, tanh, ...)",
    "avgpool": "average pooling, global average pooling",
    "maxpool": "max pooling (relevance follows the gradient: winner takes all)",
    "sum": "residual add of two or more activations (ExplicitResidual)",
    "concat": "concatenation (relevance is split back along the joined axis)",
    "gate": "product of an activation and a broadcast gate (attention / squeeze-excite)",
    "upsample": "nearest / bilinear resize (relevance redistributed by the interpolation weights)",
    "identity": "dropout, flatten, reshape, padding, identity: relevance passes unchanged",
}

#: Kinds in Zennit's sense: `Convolution` = conv + transposed conv, `Linear` = those + dense.
CONVOLUTION = ("conv", "conv-transpose")
LINEAR = ("conv", "conv-transpose", "dense")
ACTIVATION = ("relu", "activation")

#: Kinds whose relevance is the gradient (the rule is the layer's own linear backward).
GRADIENT_KINDS = ("maxpool", "concat", "upsample", "identity")
