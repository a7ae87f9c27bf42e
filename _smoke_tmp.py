import time, numpy as np, torch, logging
from recsae.data.core import Dataset, FeatureTable, leave_one_out
from recsae.evaluate import *
import models
from models.training import fit, TrainConfig
torch.set_num_threads(2)
def load(path="/work/shared/data/ml-100k/u.data"):
    a = np.loadtxt(path, dtype=np.int64)
    uu, u = np.unique(a[:,0], return_inverse=True); ii, i = np.unique(a[:,1], return_inverse=True)
    return Dataset("ml-100k", uu.astype(str), ii.astype(str), u, i, a[:,3], [f"item {x}" for x in ii], FeatureTable.empty(len(ii)))
ds = load(); sp = leave_one_out(ds)
users = eval_users(sp, "test")
neg = sample_negatives(sp, users)
print("pop", evaluate_scores(popularity_scores(sp), sp, users, "test", negatives=neg))
import sys
for name in sys.argv[1:]:
    m = models.build(name, sp)
    t=time.time()
    r = fit(m, sp, TrainConfig.for_model(name, progress=False))
    from models.training import dev_metrics
    print(name, r.best_epoch, r.epochs_run, round(r.seconds,1), r.best_dev["NDCG@10"], dev_metrics(m, sp, "test"))
