"""CAT-RS in your own training loop: the prior table lives outside the criterion.

Three steps, on scikit-learn's 8x8 digits (seconds on a CPU):

1. train the prior's model with Gaussian augmentation at sigma = 0.25 (the official recipe uses
   this sigma for every CAT-RS sigma);
2. compute its smoothed class-frequency table over the training set once (official: 10,000
   samples per image; save it with ``torch.save``);
3. train with ``CATRSLoss``, looking up each batch's prior rows by dataset index.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader

import rsmooth
from rsmooth.datasets import load_dataset
from rsmooth.training import IndexedDataset, prediction_table

train_set = load_dataset("digits", "train")  # (x in [0, 1], y); 1,500 images of 1x8x8
g = torch.Generator().manual_seed(0)


def make_model() -> nn.Module:  # any classifier; a normalisation layer would go first
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


# 1. The prior's model: Gaussian augmentation at sigma = 0.25.
torch.manual_seed(0)
prior_model = make_model()
gaussian = rsmooth.GaussianAugmentationLoss(sigma=0.25, generator=g)
optimizer = torch.optim.SGD(prior_model.parameters(), lr=0.1, momentum=0.9)
for _ in range(3):
    prior_model.train()
    for x, y in DataLoader(train_set, batch_size=64, shuffle=True, generator=g):
        optimizer.zero_grad()
        gaussian(prior_model, x, y).backward()
        optimizer.step()

# 2. The table [N, K], once, in training-index order.
table = prediction_table(prior_model, train_set, sigma=0.25, num_samples=100, generator=g)

# 3. CAT-RS at sigma = 0.5. A loader batch of 256 / m reproduces the official chunking.
model = make_model()
criterion = rsmooth.CATRSLoss(
    sigma=0.5, num_noise=4, epsilon=1.0, num_steps=4, lbd=1.0, generator=g
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loader = DataLoader(IndexedDataset(train_set), batch_size=64, shuffle=True, generator=g)
for epoch in range(2):
    model.train()
    for x, y, index in loader:
        loss = criterion(model, x, y, prior=table[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    terms = criterion.last_terms
    print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in terms.items()))

# Certify a few test images with the smoothed classifier.
test_x, test_y = load_dataset("digits", "test").tensors
smoothed = rsmooth.SmoothedClassifier(model, sigma=0.5)
cert = smoothed.certify(test_x[:20], n=1000, n0=100, alpha=0.001, generator=g)
accuracy = float((cert.prediction == test_y[:20]).float().mean())
print(f"certified accuracy at r = 0 on 20 test images: {accuracy:.2f}")
