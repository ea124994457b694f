"""The GPU check of a session lent a GPU machine: does the full-scale configuration run there, and how fast?

    python bench/gpu_check.py [--out DIR] [--budget 420] [--smoke]

1. the rehearsal (`spinexr_demo --rehearsal`): every step at full-scale settings, one epoch, on a phantom at release
   size;
2. spinexr_predict with the rehearsal's bundle on its release-size test DICOMs, on the device: s/image end to end
   and by stage, decoding in one process and in one per core (the issue's goal: <= 0.06 s/image on an H200 machine);
3. classifier training throughput at 384 px (images/s, fwd + bwd + AdamW step) for each architecture,
   fp32 and bf16 autocast with channels_last;
4. YOLO11-l at 640, batch 12: training throughput (images/s, fwd + loss + bwd + step) with AMP on and off;
5. DDP on two GPUs (torchrun, spinexr_train_cls on the rehearsal's prep tree), where there are two (with --smoke: two
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

def yolo_rate(model_yaml: str, imgsz: int, batch: int, amp: bool, steps: int, device) -> float:
    "Images/s of YOLO11 training steps (forward, ultralytics' own detection loss, backward, step) on synthetic batches."
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
    for _ in range(2): step()
    sync(); t0 = time.perf_counter()
    for _ in range(steps): step()
    sync()
    return round(batch * steps / (time.perf_counter() - t0), 1)

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
    for amp in (True, False):
        part(f"yolo_{Path(yolo).stem}_{imgsz}_b{batch}_amp_{'on' if amp else 'off'}_img_s",
             lambda: yolo_rate(yolo, imgsz, batch, amp, steps, device))
    if torch.cuda.device_count() >= 2 or a.smoke:
        part('ddp_2_gpus', lambda: ddp(out, a.smoke, a.budget))   # smoke: gloo on CPU
    else: res['ddp_2_gpus'] = f'skipped: {torch.cuda.device_count()} GPU(s)'
    res['total_seconds'] = round(time.perf_counter() - T0, 1)
    (out/'gpu_check.json').write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != 'rehearsal'}, indent=2))

if __name__ == '__main__': main()
