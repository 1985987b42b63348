"""The encoder fine-tuning starts from (`load_init`): the discriminator of a pretraining
workdir (local or gs://), or a Hugging Face export (local)."""

from typing import Any

from etils import epath

from electra_jax import train
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.model import (EncoderConfig, encoder_config_from,
                               encoder_params_from_pretraining, encoder_restore_target)
from electra_jax.tokenization import Tokenizer


def _is_pretraining_workdir(path: str) -> bool:
  return ((epath.Path(path) / "config.json").is_file()
          and epath.Path(workdir_io.checkpoint_dir(path)).is_dir())


def _is_hf_export(path: str) -> bool:
  p = epath.Path(path)
  return ((p / "discriminator").is_dir() or (p / "model.safetensors").is_file()
          or (p / "pytorch_model.bin").is_file())


def load_init(init_path: str) -> tuple[EncoderConfig, dict[str, Any], Tokenizer]:
  """Loads a pretrained encoder: (encoder config, ElectraEncoder params, tokenizer).

  Accepted layouts:
    * a pretraining workdir (`electra_jax.train`): config.json (model shape and
      vocab fingerprint), vocab/<vocab file>, checkpoints/<step>/ -- the latest
      checkpoint's discriminator (embeddings + encoder) is restored as numpy arrays
      on the host, without reading the generator or the optimizer state.
    * a Hugging Face directory (an `electra_jax.hf export` root holding
      discriminator/, or a model dir with config.json and model.safetensors), read by
      `electra_jax.hf.load_encoder`.
  INIT_PATH may be local or a URL (gs://bucket/run), read through etils.epath; a Hugging
  Face directory must be local.  Any other layout is a UserInputError.
  """
  path = workdir_io.resolve(init_path)
  if not epath.Path(path).exists():
    raise UserInputError(f"config.init={init_path} does not exist; pass a pretraining "
                         f"workdir, or '' for random init")
  if not epath.Path(path).is_dir():
    raise UserInputError(f"config.init={init_path} is a file; pass a pretraining workdir "
                         f"(with config.json, vocab/ and checkpoints/)")
  if _is_pretraining_workdir(path):
    return _load_pretraining_workdir(path)
  if _is_hf_export(path):
    from electra_jax import hf  # pylint: disable=g-import-not-at-top
    return hf.load_encoder(path)
  raise UserInputError(
      f"config.init={init_path} is not a pretraining workdir (expected config.json, "
      f"vocab/ and checkpoints/<step>/ from electra_jax.train)")


def _load_pretraining_workdir(path: str):
  saved, tokenizer = train.read_workdir_config(path)
  # The pretraining run's remat and dtype say how it computed, not what the model is:
  # fine-tuning makes its own choices (EncoderConfig's defaults, config.dtype).
  model = {k: v for k, v in saved["model"].items() if k not in ("remat", "dtype")}
  cfg = encoder_config_from(model, tokenizer.vocab_size)
  sharing = saved["model"].get("embedding_sharing", "tied")
  step, params = train.restore_params(path, encoder_restore_target(cfg, sharing))
  params = encoder_params_from_pretraining(params)  # folds a gdes embedding delta in
  print(f"init: {path} checkpoint {step} (discriminator {cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, vocab {tokenizer.vocab_size})", flush=True)
  return cfg, params, tokenizer

