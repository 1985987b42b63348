"""Hugging Face interop: export parity with transformers, import/export round trip,
fine-tuning from an export, and the errors (electra_jax.hf)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from electra_jax import finetune
from electra_jax import hf
from electra_jax import optim
from electra_jax import train
from electra_jax.config import pretrain_config
from electra_jax.errors import UserInputError
from electra_jax.model import (ElectraPretrainingModel, EncoderConfig, abstract_params,
                               encoder_config_from,
                               encoder_params_from_pretraining, generator_config)
from electra_jax.tokenization import load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    w for a in "abcdefghij" for w in (a * 2, a * 3, "##" + a)] + ["the", "a", ",", "."]


# ----------------------------------------------------------------------------- fixtures


def perturbed_params(abstract, seed: int):
  """N(0, 0.02) weights with LayerNorm scales 1 + N(0, 0.1) and biases N(0, 0.1), so a
  swapped or untransposed tensor changes the logits."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = path[-1].key
    if name == "scale":
      return (1 + 0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
    if name in ("bias", "output_bias"):
      return (0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
    return (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def make_workdir(path, size="tiny", sharing="tied", seed=0, vocab=None):
  """A pretraining workdir as train.py writes it, with random (perturbed) weights.

  The vocab is a WordPiece vocab.txt of WORDS unless `vocab` names another file.
  """
  if vocab is None:
    vocab = path.parent / f"{path.name}_vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
  config = pretrain_config(size)
  config.data.vocab = str(vocab)
  config.model.embedding_sharing = sharing
  tokenizer = load_tokenizer(str(vocab))
  os.makedirs(path)
  train.check_workdir_config(str(path), config, tokenizer.fingerprint)
  train.save_vocab(str(path), str(vocab))
  disc = encoder_config_from(config.model, tokenizer.vocab_size)
  gen = generator_config(disc, config.model.generator_size)
  model = ElectraPretrainingModel(disc, gen, sharing)
  params = perturbed_params(abstract_params(model), seed)
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  opt_state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(tx.init, params))
  state = train.TrainState(step=np.asarray(5, np.int32), params=params, opt_state=opt_state)
  train.save_state(str(path), state)
  return str(path), model, params


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(workdir, model, params, export dir) for the tiny model with tied embeddings."""
  root = tmp_path_factory.mktemp("tiny")
  workdir, model, params = make_workdir(root / "pretrain")
  out = hf.export(workdir, str(root / "export"))
  return workdir, model, params, out


def batch(vocab_size, length=12, seed=0):
  """Two rows, the second padded: ids, segments, mask."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab_size, (2, length)).astype(np.int32)
  mask = np.ones((2, length), np.int32)
  mask[1, length - 4:] = 0
  ids[1, length - 4:] = 0
  segments = np.zeros((2, length), np.int32)
  segments[:, length // 2:] = 1
  return ids, segments, mask


def hf_logits(cls, path, ids, segments, mask):
  model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                token_type_ids=torch.from_numpy(segments).long(),
                attention_mask=torch.from_numpy(mask).long())
  return out.logits.numpy()


def check_parity(model, params, out):
  vocab = model.disc.vocab_size
  ids, segments, mask = batch(vocab)
  positions = np.tile(np.arange(ids.shape[1], dtype=np.int32), (2, 1))
  ours_gen = model.apply({"params": params}, ids, segments, mask, positions, deterministic=True,
                         method=ElectraPretrainingModel.generator_logits)
  ours_disc = model.apply({"params": params}, ids, segments, mask, deterministic=True,
                          method=ElectraPretrainingModel.discriminator_logits)
  theirs_disc = hf_logits(transformers.ElectraForPreTraining,
                          os.path.join(out, "discriminator"), ids, segments, mask)
  theirs_gen = hf_logits(transformers.ElectraForMaskedLM, os.path.join(out, "generator"),
                         ids, segments, mask)
  assert theirs_gen.shape == (2, ids.shape[1], vocab)
  np.testing.assert_allclose(np.asarray(ours_disc), theirs_disc, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(ours_gen), theirs_gen, atol=1e-4, rtol=1e-4)
  assert np.abs(theirs_disc).max() > 1e-2  # the perturbed weights give non-trivial logits


def tensors(out, role):
  return safetensors_numpy.load_file(os.path.join(out, role, "model.safetensors"))


# ----------------------------------------------------------------------------- export


def test_export_matches_transformers_tiny(tiny):
  _, model, params, out = tiny
  check_parity(model, params, out)


def test_export_matches_transformers_small(tmp_path):
  workdir, model, params = make_workdir(tmp_path / "pretrain", size="small", seed=1)
  check_parity(model, params, hf.export(workdir, str(tmp_path / "export")))


def test_export_layout_and_tokenizer(tiny):
  _, model, _, out = tiny
  assert sorted(os.listdir(out)) == ["discriminator", "generator"]
  for role, arch, cfg in (("discriminator", "ElectraForPreTraining", model.disc),
                          ("generator", "ElectraForMaskedLM", model.gen)):
    config = json.loads(pathlib.Path(out, role, "config.json").read_text())
    assert config["architectures"] == [arch] and config["model_type"] == "electra"
    assert config["hidden_size"] == cfg.hidden_size and config["pad_token_id"] == 0
    tok = transformers.ElectraTokenizer.from_pretrained(os.path.join(out, role))
    assert tok.convert_tokens_to_ids(["[PAD]", "[MASK]", "aa"]) == [0, 4, 5]
    assert tok("aa bbb")["input_ids"] == [2, WORDS.index("aa"), WORDS.index("bbb"), 3]
  disc, gen = tensors(out, "discriminator"), tensors(out, "generator")
  name = "electra.embeddings.word_embeddings.weight"
  np.testing.assert_array_equal(disc[name], gen[name])  # tied: written into both


@pytest.mark.parametrize("sharing", ["tied", "untied"])
def test_import_export_round_trip_is_bit_exact(tiny, tmp_path, sharing):
  if sharing == "tied":
    out = tiny[3]
  else:
    workdir, _, _ = make_workdir(tmp_path / "untied", sharing="untied", seed=3)
    out = hf.export(workdir, str(tmp_path / "untied_export"))
  new = hf.import_checkpoint(os.path.join(out, "discriminator"), str(tmp_path / "imported"),
                             generator_dir=os.path.join(out, "generator"))
  saved = json.loads(pathlib.Path(new, "config.json").read_text())
  assert saved["model"]["embedding_sharing"] == sharing
  again = hf.export(new, str(tmp_path / "again"))
  for role in hf.SUBDIRS:
    a, b = tensors(out, role), tensors(again, role)
    assert sorted(a) == sorted(b)
    for k in a:
      assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_import_of_checkpoints_saved_by_transformers(tiny, tmp_path):
  """save_pretrained drops the tied generator_lm_head.weight; import still restores all."""
  out = tiny[3]
  saved = {}
  for cls, role in ((transformers.ElectraForPreTraining, "discriminator"),
                    (transformers.ElectraForMaskedLM, "generator")):
    saved[role] = str(tmp_path / role)
    cls.from_pretrained(os.path.join(out, role)).save_pretrained(saved[role])
  assert "generator_lm_head.weight" not in tensors(str(tmp_path), "generator")
  new = hf.import_checkpoint(saved["discriminator"], str(tmp_path / "imported"),
                             generator_dir=saved["generator"],
                             vocab=os.path.join(out, "discriminator", "vocab.txt"))
  again = hf.export(new, str(tmp_path / "again"))
  for role in hf.SUBDIRS:
    a, b = tensors(out, role), tensors(again, role)
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_import_without_generator_then_finetune_init(tiny, tmp_path, capsys):
  workdir, _, params, out = tiny
  new = hf.import_checkpoint(out, str(tmp_path / "imported"))
  assert "generator: freshly initialised" in capsys.readouterr().out
  want = encoder_params_from_pretraining(params)
  for init in (new, out, os.path.join(out, "discriminator")):
    cfg, restored, tokenizer = finetune.load_init(init)
    want_cfg = encoder_config_from(pretrain_config("tiny").model, len(WORDS))
    # Every source gives the same model; remat is fine-tuning's own (the default).
    assert cfg == dataclasses.replace(want_cfg, remat=EncoderConfig.remat)
    assert tokenizer.vocab_size == len(WORDS)
    assert jax.tree.structure(restored) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  w = hf.read_workdir(new)
  assert w.step == 0 and w.embedding_sharing == "tied"
  np.testing.assert_array_equal(w.params["discriminator"]["discriminator_predictions"]
                                ["dense"]["kernel"],
                                params["discriminator"]["discriminator_predictions"]
                                ["dense"]["kernel"])


def test_imported_checkpoint_restores_as_train_and_evaluate_restores_it(tiny, tmp_path,
                                                                      capsys):
  """The same abstract TrainState and restore call as train.py (which then resumes)."""
  import orbax.checkpoint as ocp
  new = hf.import_checkpoint(tiny[3], str(tmp_path / "imported"),
                             generator_dir=os.path.join(tiny[3], "generator"))
  assert "--config=configs/tiny.py" in capsys.readouterr().out
  config = pretrain_config("tiny")
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  model = tiny[1]

  def init_state():
    params = abstract_params(model)
    return train.TrainState(step=np.zeros((), np.int32), params=params,
                            opt_state=tx.init(params))

  target = jax.eval_shape(init_state)
  manager = ocp.CheckpointManager(os.path.join(new, "checkpoints"),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  assert manager.latest_step() == 0
  state = manager.restore(0, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  assert jax.tree.structure(state) == jax.tree.structure(target)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(tiny[2])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(state.opt_state))


def test_import_electra_model_checkpoint_without_prefix_or_head(tiny, tmp_path, capsys):
  out = tiny[3]
  base = tmp_path / "base"
  base.mkdir()
  src = tensors(out, "discriminator")
  stripped = {k[len("electra."):]: v for k, v in src.items() if k.startswith("electra.")}
  safetensors_numpy.save_file(stripped, str(base / "model.safetensors"), metadata={"format": "pt"})
  config = json.loads(pathlib.Path(out, "discriminator", "config.json").read_text())
  config["architectures"] = ["ElectraModel"]
  (base / "config.json").write_text(json.dumps(config))
  new = hf.import_checkpoint(str(base), str(tmp_path / "w"),
                             vocab=os.path.join(out, "discriminator", "vocab.txt"))
  assert "head freshly initialised" in capsys.readouterr().out
  _, restored, _ = finetune.load_init(new)
  _, want, _ = finetune.load_init(out)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_sentencepiece_vocab_is_exported_and_imported(tmp_path):
  from electra_jax.data import vocab as vocab_lib
  text = tmp_path / "text.txt"
  rng = np.random.default_rng(0)
  words = ["apple", "banana", "cherry", "dog", "egg", "fig", "grape", "house"]
  text.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)))
  spm = vocab_lib.train_vocab(str(text), str(tmp_path / "spm"), vocab_size=30)
  workdir, _, _ = make_workdir(tmp_path / "pre", vocab=spm)
  out = hf.export(workdir, str(tmp_path / "export"))
  files = sorted(os.listdir(os.path.join(out, "discriminator")))
  name = os.path.basename(spm)
  assert name in files and "tokenizer_config.json" in files and "vocab.txt" not in files
  config = json.loads(pathlib.Path(out, "discriminator", "tokenizer_config.json").read_text())
  assert config["vocab_file"] == name
  assert config["special_token_ids"] == {"pad_token_id": 0, "unk_token_id": 1, "cls_token_id": 2,
                                         "sep_token_id": 3, "mask_token_id": 4}
  new = hf.import_checkpoint(out, str(tmp_path / "imported"))
  _, _, tokenizer = finetune.load_init(new)
  assert tokenizer.kind == "sentencepiece"
  assert tokenizer.fingerprint == load_tokenizer(spm).fingerprint


# ----------------------------------------------------------------------------- errors


def _copy_model(out, dest, edit=None):
  """A copy of OUT/discriminator whose tensors pass through `edit(dict)`."""
  import shutil
  shutil.copytree(os.path.join(out, "discriminator"), dest)
  if edit is not None:
    t = tensors(out, "discriminator")
    edit(t)
    safetensors_numpy.save_file(t, os.path.join(dest, "model.safetensors"),
                                metadata={"format": "pt"})
  return str(dest)


def test_import_errors(tiny, tmp_path):
  out = tiny[3]
  name = "electra.encoder.layer.1.attention.self.key.weight"
  missing = _copy_model(out, tmp_path / "missing", lambda t: t.pop(name))
  with pytest.raises(UserInputError, match=f"lacks tensor {name}"):
    hf.import_checkpoint(missing, str(tmp_path / "w1"))
  shape = _copy_model(out, tmp_path / "shape", lambda t: t.update({name: t[name][:, :32]}))
  with pytest.raises(UserInputError, match=rf"{name} has shape \(64, 32\) but its config.json "
                     r"gives \(64, 64\)"):
    hf.import_checkpoint(shape, str(tmp_path / "w2"))
  pickled = _copy_model(out, tmp_path / "pickled")
  os.remove(os.path.join(pickled, "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in tensors(out, "discriminator").items()},
             os.path.join(pickled, "pytorch_model.bin"))
  with pytest.raises(UserInputError, match="--allow_pickle"):
    hf.import_checkpoint(pickled, str(tmp_path / "w3"))
  with pytest.raises(UserInputError, match="--allow_pickle"):
    finetune.load_init(pickled)
  hf.import_checkpoint(pickled, str(tmp_path / "w4"), allow_pickle=True)
  with pytest.raises(UserInputError, match="already exists"):
    hf.import_checkpoint(out, str(tmp_path / "w4"))
  with pytest.raises(UserInputError, match="does not exist"):
    hf.import_checkpoint(str(tmp_path / "nothing"), str(tmp_path / "w5"))
  with pytest.raises(UserInputError, match="ELECTRA discriminator does not have"):
    hf.import_checkpoint(os.path.join(out, "generator"), str(tmp_path / "w6"))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".w", "w"))) == ["w4"]


def test_export_errors(tiny, tmp_path):
  workdir, _, _, out = tiny
  with pytest.raises(UserInputError, match="already exists"):
    hf.export(workdir, out)
  with pytest.raises(UserInputError, match="not a pretraining workdir"):
    hf.export(str(tmp_path), str(tmp_path / "o"))
  with pytest.raises(UserInputError, match="parent .* does not exist"):
    hf.export(workdir, str(tmp_path / "a" / "b"))
  assert not (tmp_path / "o").exists()


def test_export_failure_leaves_no_output(tiny, tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(hf, "write_tokenizer", boom)
  with pytest.raises(OSError, match="disk full"):
    hf.export(tiny[0], str(tmp_path / "o"))
  assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_with_exit_status_2(tiny, tmp_path):
  r = subprocess.run([sys.executable, "-m", "electra_jax.hf", "export", f"--workdir={tiny[0]}",
                      f"--output_dir={tiny[3]}"], capture_output=True, text=True, cwd=REPO,
                     timeout=120)
  assert r.returncode == 2, r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "already exists" in errors[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_import_of_half_precision_checkpoints(tiny, tmp_path, dtype):
  """Checkpoints saved with torch_dtype=bfloat16/float16 import as their float32 values."""
  out = tiny[3]
  saved = {}
  for cls, role in ((transformers.ElectraForPreTraining, "discriminator"),
                    (transformers.ElectraForMaskedLM, "generator")):
    saved[role] = str(tmp_path / role)
    model = cls.from_pretrained(os.path.join(out, role)).to(getattr(torch, dtype))
    model.save_pretrained(saved[role])
  with safe_open(os.path.join(saved["discriminator"], "model.safetensors"), "pt") as f:
    assert f.get_tensor("discriminator_predictions.dense.weight").dtype == getattr(torch, dtype)
  new = hf.import_checkpoint(saved["discriminator"], str(tmp_path / "imported"),
                             generator_dir=saved["generator"],
                             vocab=os.path.join(out, "discriminator", "vocab.txt"))
  again = hf.export(new, str(tmp_path / "again"))
  for role in hf.SUBDIRS:
    a, b = tensors(out, role), tensors(again, role)
    for k in a:
      assert b[k].dtype == np.float32
      rounded = torch.from_numpy(a[k]).to(getattr(torch, dtype)).to(torch.float32).numpy()
      np.testing.assert_array_equal(b[k], rounded, err_msg=k)
