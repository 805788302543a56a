"""streamformer_jax: StreamFormer (ICCV 2025) streaming video backbone in JAX/Flax."""
from streamformer_jax.api import FeatureExtractor, FeatureStream
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.models.streamformer import StreamFormer, init_model, normalize_pixels
from streamformer_jax.stream_pool import PoolFullError, StreamFrameError, StreamPool

__all__ = ["FeatureExtractor", "FeatureStream", "PoolFullError", "StreamFormer", "StreamFormerConfig",
           "StreamFrameError", "StreamPool", "init_model", "normalize_pixels"]
__version__ = "0.1.0"
