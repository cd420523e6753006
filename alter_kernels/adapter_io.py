"""Old path of the adapter files, now alter_kernels/model/io.py (issue 14)."""
# SHIM(issue 14): removed at integration
from .model.io import (_MUST_MATCH, CONFIG_NAME, FORMAT, FORMAT_VERSION, REQUIRED_FIELDS,  # noqa: F401
                       WEIGHTS_NAME, AdapterError, _base_model_name, load_adapter, read_adapter_config,
                       save_adapter)
