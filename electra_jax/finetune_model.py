"""The fine-tuning model and its evaluation: SequenceClassifier (the encoder with a
classification or regression head), the losses, sharded batches, the jitted predict
function and the task metrics of a split."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax import task_metrics
from electra_jax import tasks
from electra_jax.model import ElectraEncoder, EncoderConfig


class SequenceClassifier(nn.Module):
  """ElectraEncoder + dropout -> dense(num_labels) on the final [CLS] hidden state.

  Params: {'electra': ElectraEncoder params, 'classifier': {kernel, bias}}.  The
  classifier runs in float32; its kernel is Glorot-uniform as in the original
  (`tf.layers.dense`).  Regression tasks use num_labels=1.
  """
  cfg: EncoderConfig
  num_labels: int
  head_dropout: float = 0.1

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask, *,
               deterministic: bool = True) -> jnp.ndarray:
    """-> logits [B, num_labels] float32."""
    hidden = ElectraEncoder(self.cfg, name="electra")(
        input_ids, segment_ids, input_mask, deterministic=deterministic)
    cls = hidden[:, 0].astype(jnp.float32)
    cls = nn.Dropout(self.head_dropout)(cls, deterministic=deterministic)
    return nn.Dense(self.num_labels, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.zeros, name="classifier")(cls)


def example_losses(outputs: jnp.ndarray, labels: jnp.ndarray, is_regression: bool
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(per-example loss [B], labelled [B] bool): softmax CE, or squared error.

  Unlabelled rows (class -1, or NaN targets) get loss 0 and labelled=False.
  """
  if is_regression:
    labelled = ~jnp.isnan(labels)
    err = outputs[:, 0] - jnp.where(labelled, labels, 0.0)
    return jnp.where(labelled, jnp.square(err), 0.0), labelled
  labelled = labels >= 0
  logp = jax.nn.log_softmax(outputs, axis=-1)
  safe = jnp.where(labelled, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
  return jnp.where(labelled, nll, 0.0), labelled


def _process_rows(array: np.ndarray) -> np.ndarray:
  """This process's share of a global batch (all of it on a single host)."""
  n = jax.process_count()
  if n == 1:
    return array
  per = array.shape[0] // n
  i = jax.process_index()
  return array[i * per:(i + 1) * per]


def device_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """A global batch of host arrays as jax.Arrays with SHARDING (each process its rows)."""
  return {k: jax.make_array_from_process_local_data(sharding, _process_rows(v))
          for k, v in batch.items()}


def padded_batches(features: dict[str, np.ndarray], batch_size: int):
  """Yields (batch, num_real): fixed-size batches; the last is padded with weight-0 rows."""
  n = features["input_ids"].shape[0]
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in features.items()}
    real = batch["input_ids"].shape[0]
    batch["weights"] = np.ones((real,), np.float32)
    if real < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, real


def batch_loss(params, batch, *, model: SequenceClassifier, is_regression: bool,
               key=None):
  """Weighted mean loss of a batch and (outputs, loss sum, weight sum).

  Rows count with batch['weights'] (0 for padding) times whether they carry a label.
  `key` None runs deterministically (no dropout).
  """
  deterministic = key is None
  outputs = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                        batch["input_mask"], deterministic=deterministic,
                        rngs=None if deterministic else {"dropout": key})
  losses, labelled = example_losses(outputs, batch["labels"], is_regression)
  weights = batch["weights"] * labelled
  loss_sum, weight_sum = jnp.sum(losses * weights), jnp.sum(weights)
  return loss_sum / jnp.maximum(weight_sum, 1.0), (outputs, loss_sum, weight_sum)


def make_predict_fn(model: SequenceClassifier, is_regression: bool, mesh: Mesh,
                    batch_size: int):
  """predict(params, features) -> (outputs [N, num_labels], mean loss of labelled rows).

  Runs a jitted step over `batch_size` rows at a time, sharded along the mesh's
  'data' axis; the last batch is padded with weight-0 rows, so all N examples are
  scored once and the padding changes neither the outputs nor the loss.
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  def step(params, batch):
    _, aux = batch_loss(params, batch, model=model, is_regression=is_regression)
    return aux

  # params keep their own (replicated) sharding; outputs come back replicated.
  step = jax.jit(step, in_shardings=(None, batch_sharding), out_shardings=replicated)

  def predict(params, features) -> tuple[np.ndarray, float]:
    results, reals = [], []
    for batch, real in padded_batches(features, batch_size):
      results.append(step(params, device_batch(batch, batch_sharding)))  # asynchronous
      reals.append(real)
    results = jax.device_get(results)  # one wait for all batches
    outputs = np.concatenate([np.asarray(out)[:real]
                              for (out, _, _), real in zip(results, reals)])
    loss_sum = sum(float(ls) for _, ls, _ in results)
    weight_sum = sum(float(ws) for _, _, ws in results)
    return outputs, loss_sum / max(weight_sum, 1.0)

  return predict


def split_metrics(spec: tasks.TaskSpec, labels: np.ndarray, outputs: np.ndarray,
                  loss: float) -> dict[str, float]:
  """The task's metrics of model outputs [N, num_labels] against labels [N], and 'loss'."""
  preds = outputs[:, 0] if spec.is_regression else outputs
  metrics = task_metrics.compute(spec.metrics, labels, preds)
  metrics["loss"] = float(loss)
  return metrics


def evaluate(predict, spec: tasks.TaskSpec, params, features) -> dict[str, float]:
  """The task's metrics (and 'loss') of `params` on a labelled split's features."""
  outputs, loss = predict(params, features)
  return split_metrics(spec, features["labels"], outputs, loss)

