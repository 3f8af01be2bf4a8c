"""A tiny dataset and config for the training tests, and tests of the spec checks.

Other training test modules import `tiny_dataset` and `tiny_config` from here
(pytest puts tests/ on sys.path).
"""

import numpy as np
import pytest

from gmn_jax import config as gmn_config
from gmn_jax import specs
from gmn_jax import train_state
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError


def tiny_dataset(seed=0, num_seen=6, num_unseen=3, feature_dim=16, embedding_dim=5,
                 train_per_class=12) -> ZSLDataset:
  """Features = ReLU(a_c W + noise): unseen classes predictable from embeddings.

  Seen classes are the even global ids and unseen the odd ones below
  2·num_unseen, so that local and global class ids differ.
  """
  rng = np.random.default_rng(seed)
  num_classes = num_seen + num_unseen
  embeddings = rng.normal(size=(num_classes, embedding_dim)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  projection = rng.normal(size=(embedding_dim, feature_dim)).astype(np.float32)
  unseen = np.arange(1, 2 * num_unseen, 2, dtype=np.int32)
  seen = np.setdiff1d(np.arange(num_classes), unseen).astype(np.int32)

  def draw(classes, per_class):
    labels = np.repeat(classes, per_class).astype(np.int32)
    noise = 0.3 * rng.normal(size=(labels.size, feature_dim))
    return np.maximum(embeddings[labels] @ projection + noise, 0).astype(np.float32), labels

  train_x, train_y = draw(seen, train_per_class)
  seen_x, seen_y = draw(seen, 4)
  unseen_x, unseen_y = draw(unseen, 5)
  return ZSLDataset(name="tiny", split="test", train_features=train_x, train_labels=train_y,
                    test_seen_features=seen_x, test_seen_labels=seen_y,
                    test_unseen_features=unseen_x, test_unseen_labels=unseen_y,
                    class_embeddings=embeddings, seen_classes=seen, unseen_classes=unseen)


def tiny_config(method="cwgan_gm", **overrides):
  """A config small enough to compile and run in seconds on a CPU."""
  c = gmn_config.get_base_config()
  c.dataset = "tiny"
  c.data_dir = "builtin:digits"  # Only a label: the tests pass the dataset in memory.
  c.method = method
  c.seeds = (1, 2)
  c.generator.noise_dim = 4
  c.generator.hidden_dims = (8,)
  c.critic.hidden_dims = (8,)
  c.train.num_iterations = 4
  c.train.batch_size = 8
  c.train.n_critic = 2
  c.train.iterations_per_call = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.gm.weight = 10.0
  c.gm.num_classes = 2
  c.gm.real_per_class = 4
  c.gm.fake_repeat = 2
  c.cls.pretrain_epochs = 2
  c.regressor.pretrain_epochs = 2
  c.mmd.num_classes = 2
  c.mmd.real_per_class = 4
  c.mmd.fake_per_class = 6
  c.cvae.encoder_hidden_dims = (8,)
  c.eval.epochs = 3
  c.eval.batch_size = 16
  c.eval.n_synth_unseen = 10
  c.eval.num_classifier_seeds = 2
  c.update_from_flattened_dict(overrides)
  return c


def test_train_data_uses_local_seen_indices():
  ds = tiny_dataset()
  spec = specs.train_spec(tiny_config(), ds)
  data = train_state.make_train_data(ds, spec)
  np.testing.assert_array_equal(ds.seen_classes[data.labels], ds.train_labels)
  np.testing.assert_array_equal(data.seen_embeddings, ds.class_embeddings[ds.seen_classes])
  np.testing.assert_array_equal(data.unseen_embeddings,
                                ds.class_embeddings[ds.unseen_classes])
  assert data.unlabelled_features.shape == (0, ds.feature_dim)
  spec = specs.train_spec(tiny_config("wgan_su_gm"), ds)
  data = train_state.make_train_data(ds, spec)
  np.testing.assert_array_equal(data.unlabelled_features, ds.test_unseen_features)


def test_transductive_batch_split_follows_class_counts():
  ds = tiny_dataset()  # 6 seen : 3 unseen
  spec = specs.train_spec(tiny_config("wgan_su_gm", **{"train.batch_size": 9}), ds)
  assert spec.transductive_seen_count == 6
  assert spec.num_generated_classes == 9
  assert not spec.variant.conditional_critic


def test_train_spec_refuses_what_the_dataset_cannot_satisfy():
  with pytest.raises(ConfigError, match="gm.num_classes: expected at most the 6 seen classes"):
    specs.train_spec(tiny_config(**{"gm.num_classes": 7}), tiny_dataset())


def test_zero_gm_classes_means_every_seen_class_of_the_split():
  assert specs.train_spec(tiny_config(**{"gm.num_classes": 0}),
                          tiny_dataset(num_seen=6)).gm_num_classes == 6
  assert specs.train_spec(tiny_config(**{"gm.num_classes": 0}),
                          tiny_dataset(num_seen=4)).gm_num_classes == 4


@pytest.mark.parametrize("method, overrides, field", [
    ("wgan_su_gm", {"critic.conditional": True}, "critic.conditional"),
    ("wgan_su_gm", {"train.batch_size": 1}, "train.batch_size"),
    ("cwgan_gm", {"gm.granularity": "cell"}, "gm.granularity"),
    ("cwgan_gm", {"generator.kind": "vae"}, "generator.kind"),
    ("cwgan_gm", {"train.batch_size": 0}, "train.batch_size"),
    ("nope", {}, "method"),
])
def test_the_schema_refuses_impossible_settings(method, overrides, field):
  with pytest.raises(ConfigError, match=field):
    gmn_config.validate(tiny_config(method, **overrides), check_data_dir=False)


def test_config_validation_names_every_bad_field():
  c = tiny_config()
  c.train.batch_size = -3
  c.gm.theta_sampling = "grid"
  with pytest.raises(ConfigError) as error:
    gmn_config.validate(c, check_data_dir=False)
  assert "config.train.batch_size" in str(error.value)
  assert "config.gm.theta_sampling" in str(error.value)
  gmn_config.validate(tiny_config(), check_data_dir=False)  # the tiny config itself is valid
