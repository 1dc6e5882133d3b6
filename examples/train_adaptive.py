"""Sun et al.'s recipe in your own training loop: the sampling schedule lives outside the criterion.

Before the discard epoch it is plain Gaussian augmentation; at the discard epoch every training
example whose noisy accuracy is below the threshold is dropped for good; from then on the kept
examples are drawn with replacement in proportion to an approximate certified radius (refreshed
every few epochs) and the adversary on the noise is on. On scikit-learn's 8x8 digits (seconds).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader

import rsmooth
from rsmooth.datasets import load_dataset
from rsmooth.training import EasySampleSchedule

train_set = load_dataset("digits", "train")  # (x in [0, 1], y); 1,500 images of 1x8x8
g = torch.Generator().manual_seed(0)
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

epochs, discard_epoch = 4, 2  # official CIFAR-10: 150 epochs, discard at 60 or 70
criterion = rsmooth.AdaptiveNoiseLoss(
    sigma=0.25, epsilon=0.25, num_steps=3, num_noise=4, adversarial_from=discard_epoch, generator=g
)
schedule = EasySampleSchedule(
    threshold=0.5, discard_epoch=discard_epoch, sigma=0.25, reweight_every=2, generator=g
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for epoch in range(epochs):
    criterion.set_epoch(epoch)  # the adversary is on from the discard epoch
    sampler = schedule.sampler(epoch, model, train_set)  # discards / reweights when due
    model.train()
    for x, y in DataLoader(train_set, batch_size=64, sampler=sampler):  # 256 / m
        loss = criterion(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kept = len(train_set) if schedule.kept is None else len(schedule.kept)
    terms = ", ".join(f"{k} {v:.3f}" for k, v in criterion.last_terms.items())
    adversarial = criterion.scheduled["adversarial"]  # in force this epoch
    print(f"epoch {epoch}: {kept} examples kept, adversarial {adversarial}, {terms}")

test_x, test_y = load_dataset("digits", "test").tensors
smoothed = rsmooth.SmoothedClassifier(model, sigma=0.25)
cert = smoothed.certify(test_x[:20], n=1000, n0=100, alpha=0.001, generator=g)
accuracy = float((cert.prediction == test_y[:20]).float().mean())
print(f"certified accuracy at r = 0 on 20 test images: {accuracy:.2f}")
