"""The GPU check of a session lent a GPU machine: does the full-scale configuration run there, and how fast?

    python bench/gpu_check.py [--out DIR] [--budget 420] [--smoke]

1. the rehearsal (`spinexr_demo --rehearsal`): every step at full-scale settings, one epoch, on a phantom at release
   size;
2. spinexr_predict with the rehearsal's bundle on its release-size test DICOMs, on the device: s/image end to end
   and by stage, decoding in one process and in one per core (the issue's goal: <= 0.06 s/image on an H200 machine);
3. classifier training throughput at 384 px (images/s, fwd + bwd + AdamW step) for each architecture,
   fp32 and bf16 autocast with channels_last;
4. YOLO11-l at 640, batch 12 and 48: training throughput (images/s, fwd + loss + bwd + step) with AMP on and off,
   and a profile of a step at batch 12 (wall time against the device's busy time, the costliest operations): why AMP
   changes nothing at batch 12;
5. the classifiers' input pipeline from the training cache (`07a_cache`) at 384 px, batch 32, augmentation on the
   device: images/s with 0 loader processes and with 8, against the classifiers' synthetic rates above;
6. GPU utilisation sampled (nvidia-smi, every 0.2 s) while `spinexr_train_cls` (resnet50) and `spinexr_train_det`
   train one epoch on the rehearsal's prep tree;
7. DDP on two GPUs (torchrun, spinexr_train_cls on the rehearsal's prep tree), where there are two (with --smoke: two
   CPU processes).

Each part stops when the budget (seconds, whole script) is spent; results go to OUT/gpu_check.json and are printed.
`--smoke` runs the same code at toy sizes on any machine (CPU included), to check the script itself.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

import torch

T0 = time.perf_counter()
def left(budget): return budget - (time.perf_counter() - T0)

def bin_(name): return str(Path(sys.executable).parent/name)

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def rehearsal(out: Path, smoke: bool, budget: float) -> dict:
    args = [bin_('spinexr_demo'), '--out', str(out/'rehearsal')] + (['--tiny'] if smoke else ['--rehearsal'])
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, timeout=max(60, left(budget) - 60))
    res = dict(ok=r.returncode == 0, seconds=round(time.perf_counter() - t0, 1), stdout_tail=r.stdout[-4000:],
               stderr_tail=r.stderr[-1500:])
    if (out/'rehearsal'/'rehearsal.csv').exists(): res['table'] = (out/'rehearsal'/'rehearsal.csv').read_text()
    return res

def cls_rate(arch: str, size: int, bs: int, bf16: bool, steps: int, device) -> float:
    "Images/s of fwd + bwd + AdamW step of a 1-channel timm classifier on synthetic batches."
    import timm
    model = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=1).to(device)
    if bf16: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(bs, 1, size, size, device=device), torch.rand(bs, 1, device=device).round()
    if bf16: x = x.to(memory_format=torch.channels_last)
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(2): step()
    sync(); t0 = time.perf_counter()
    for _ in range(steps): step()
    sync()
    return round(bs * steps / (time.perf_counter() - t0), 1)

def yolo_step(model_yaml: str, imgsz: int, batch: int, amp: bool, device):
    "One YOLO training step (forward, ultralytics' own detection loss, backward, AdamW step) on a synthetic batch."
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    net = DetectionModel(model_yaml, ch=1, nc=7, verbose=False).to(device).train()
    net.args = get_cfg()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == 'cuda')
    n = 4 * batch
    b = dict(img=torch.rand(batch, 1, imgsz, imgsz, device=device),
             batch_idx=torch.arange(batch, device=device).repeat_interleave(4).float(),
             cls=torch.randint(0, 7, (n, 1), device=device).float(), bboxes=torch.rand(n, 4, device=device) * 0.3 + 0.2)
    def step():
        with torch.autocast(device.type, enabled=amp and device.type == 'cuda'):
            loss, _ = net.loss(b)
        opt.zero_grad(set_to_none=True); scaler.scale(loss.sum()).backward(); scaler.step(opt); scaler.update()
    return step

def yolo_rate(model_yaml: str, imgsz: int, batch: int, amp: bool, steps: int, device) -> float:
    "Images/s of YOLO training steps on synthetic batches."
    step = yolo_step(model_yaml, imgsz, batch, amp, device)
    for _ in range(2): step()
    sync(); t0 = time.perf_counter()
    for _ in range(steps): step()
    sync()
    return round(batch * steps / (time.perf_counter() - t0), 1)

def yolo_profile(model_yaml: str, imgsz: int, batch: int, amp: bool, steps: int, device) -> dict:
    ("Where a YOLO training step's time goes (torch.profiler): wall time against the time the device computes, and "
     "the costliest operations. A device busy for a small share of the wall time waits on the CPU (Python, kernel "
     "launches), which no precision changes; cuDNN's convolutions are TF32 under fp32 by default: less for AMP.")
    from torch.profiler import ProfilerActivity, profile
    step = yolo_step(model_yaml, imgsz, batch, amp, device)
    for _ in range(3): step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    sync(); t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps): step()
        sync()
    wall = (time.perf_counter() - t0) / steps * 1e3
    ev = prof.key_averages()
    dev = lambda e: getattr(e, 'self_device_time_total', 0) or getattr(e, 'self_cuda_time_total', 0)
    busy = sum(dev(e) for e in ev) / 1e3 / steps
    top = sorted(ev, key=lambda e: dev(e) or e.self_cpu_time_total, reverse=True)[:8]
    return dict(wall_ms_per_step=round(wall, 1), device_busy_ms_per_step=round(busy, 1),
                device_busy_share=round(busy / wall, 3) if device.type == 'cuda' else None,
                cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                top=[(e.key[:60], round((dev(e) or e.self_cpu_time_total) / 1e3 / steps, 2)) for e in top])

def ddp(out: Path, smoke: bool, budget: float) -> dict:
    prep = out/'rehearsal'/'prep'
    if not (prep/'labels.csv').exists(): return dict(skipped='no prep tree from the rehearsal')
    size = '64' if smoke else '384'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', bin_('spinexr_train_cls'),
           '--arch', 'resnet50', '--data', str(prep), '--out', str(out/'ddp'), '--size', size, '--epochs', '1',
           '--no_pretrained']
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, left(budget) - 30))
    return dict(ok=r.returncode == 0, seconds=round(time.perf_counter() - t0, 1), stdout_tail=r.stdout[-1500:],
                stderr_tail=r.stderr[-1500:])

def predict_rate(out: Path, workers: int, budget: float) -> dict:
    "spinexr_predict (--device auto) of the rehearsal bundle on its test DICOMs: s/image and the stage shares."
    import re
    model, dicoms = out/'rehearsal'/'model', sorted((out/'rehearsal').rglob('test_images/*.dicom'))
    if not (model/'bundle.json').exists() or not dicoms: return dict(skipped='no bundle or DICOMs from the rehearsal')
    cmd = [bin_('spinexr_predict'), str(model), *map(str, dicoms), '--out', str(out/f'predict_w{workers}'),
           '--workers', str(workers), '--batch', '16', '--no_overlays']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, left(budget) - 20))
    m = re.search(r'([0-9.]+) s per image \(([^)]*)\), models loaded in ([0-9.]+) s \(([^)]*)\)', r.stdout)
    if not m: return dict(ok=False, stdout_tail=r.stdout[-1500:], stderr_tail=r.stderr[-1500:])
    return dict(ok=True, images=len(dicoms), s_per_image=float(m[1]), stages=m[2], load_s=float(m[3]), on=m[4])

def input_rate(out: Path, workers: int, smoke: bool) -> dict:
    "Images/s of one epoch of the classifier training loader from the cache (built first, timed apart), on the device."
    from spinexr.classify import ClsConfig, cls_dataloaders
    prep = out/'rehearsal'/'prep'
    if not (prep/'labels.csv').exists(): return dict(skipped='no prep tree from the rehearsal')
    cfg = ClsConfig(arch='resnet50', size=64 if smoke else 384, bs=4 if smoke else 32, workers=workers,
                    pretrained=False, mean=0.5, std=0.25)
    t0 = time.perf_counter(); dls = cls_dataloaders(prep, cfg); setup = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    for _ in range(1 if smoke else 3):
        for x, y in dls.train: n += len(x)
    sync()
    return dict(images_per_s=round(n / (time.perf_counter() - t0), 1), cache_and_loaders_s=round(setup, 1),
                on=str(x.device))

def utilisation_while(cmd: list, budget: float) -> dict:
    "Run `cmd`, sampling the GPU's utilisation every 0.2 s: the mean, the mean over busy samples, the seconds."
    smi = None
    if torch.cuda.is_available():
        smi = subprocess.Popen(['nvidia-smi', '--query-gpu=utilization.gpu', '--format=csv,noheader,nounits',
                                '-lms', '200', '-i', '0'], stdout=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, left(budget) - 30))
    res = dict(ok=r.returncode == 0, seconds=round(time.perf_counter() - t0, 1), stderr_tail=r.stderr[-800:])
    if smi:
        smi.terminate(); samples = [int(v) for v in smi.communicate()[0].split() if v.isdigit()]
        busy = [v for v in samples if v > 0]
        res.update(samples=len(samples), mean_pct=round(sum(samples) / max(len(samples), 1), 1),
                   busy_mean_pct=round(sum(busy) / max(len(busy), 1), 1))
    return res

def train_commands(out: Path, smoke: bool) -> dict:
    "spinexr_train_cls (resnet50) and spinexr_train_det (yolo11l) for one epoch on the rehearsal's prep tree."
    prep = out/'rehearsal'/'prep'
    cls = [bin_('spinexr_train_cls'), '--arch', 'resnet50', '--data', str(prep), '--out', str(out/'util_cls'),
           '--epochs', '1', '--no_pretrained'] + (['--size', '64'] if smoke else ['--bs', '64'])
    det = [bin_('spinexr_train_det'), '--data', str(prep), '--out', str(out/'util_det'), '--epochs', '1',
           '--no_pretrained'] + (['--model', 'yolo11n.yaml', '--imgsz', '128'] if smoke else [])
    return dict(cls=cls, det=det)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=os.environ.get('OUT', 'gpu_check'))
    p.add_argument('--budget', type=float, default=420, help='seconds for the whole script')
    p.add_argument('--smoke', action='store_true', help='toy sizes, any device: checks the script itself')
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('SPINEXR_CACHE', str(out/'cache'))
    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    res = dict(device=torch.cuda.get_device_name(0) if cuda else 'cpu', n_gpus=torch.cuda.device_count(),
               torch=torch.__version__, smoke=a.smoke)
    size, bs, steps = (64, 4, 2) if a.smoke else (384, 32, 10)
    yolo, imgsz, batch = ('yolo11n.yaml', 128, 2) if a.smoke else ('yolo11l.yaml', 640, 12)

    def part(name, f):
        if left(a.budget) < 20: res[name] = 'skipped: budget spent'; return
        t0 = time.perf_counter()
        try: res[name] = f()
        except Exception as e: res[name] = f'FAILED: {type(e).__name__}: {str(e)[:500]}'
        print(f'{name}: {time.perf_counter() - t0:.0f} s: {json.dumps(res[name])[:600]}', flush=True)

    part('rehearsal', lambda: rehearsal(out, a.smoke, a.budget))
    for w in sorted({1, os.cpu_count() or 1}):
        part(f'predict_rehearsal_bundle_workers_{w}', lambda: predict_rate(out, w, a.budget))
    for arch in ('densenet121', 'tf_efficientnetv2_s', 'resnet50'):
        part(f'cls_{arch}_{size}_fp32_img_s', lambda: cls_rate(arch, size, bs, False, steps, device))
        part(f'cls_{arch}_{size}_bf16_channels_last_img_s', lambda: cls_rate(arch, size, bs, True, steps, device))
    for b in (batch, 4 * batch):            # at 4x the batch: does AMP help once the device is busy?
        for amp in (True, False):
            part(f"yolo_{Path(yolo).stem}_{imgsz}_b{b}_amp_{'on' if amp else 'off'}_img_s",
                 lambda: yolo_rate(yolo, imgsz, b, amp, steps, device))
    for amp in (True, False):
        part(f"yolo_{Path(yolo).stem}_{imgsz}_b{batch}_amp_{'on' if amp else 'off'}_profile",
             lambda: yolo_profile(yolo, imgsz, batch, amp, 2 if a.smoke else 5, device))
    for w in (0, 2 if a.smoke else 8):
        part(f'cls_input_cache_workers_{w}', lambda: input_rate(out, w, a.smoke))
    cmds = train_commands(out, a.smoke)
    if (out/'rehearsal'/'prep'/'labels.csv').exists():
        for name in ('cls', 'det'):
            part(f'gpu_utilisation_train_{name}', lambda: utilisation_while(cmds[name], a.budget))
    if torch.cuda.device_count() >= 2 or a.smoke:
        part('ddp_2_gpus', lambda: ddp(out, a.smoke, a.budget))   # smoke: gloo on CPU
    else: res['ddp_2_gpus'] = f'skipped: {torch.cuda.device_count()} GPU(s)'
    res['total_seconds'] = round(time.perf_counter() - T0, 1)
    (out/'gpu_check.json').write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != 'rehearsal'}, indent=2))

if __name__ == '__main__': main()
