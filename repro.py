"""
The paper's comparison at small scale, on data that needs no download: prepare a task's data from this machine's
own text, train each method on it with the same budget and seed, evaluate all the same way, and say, with 95%
intervals, whether each method writes less of the undesirable content than MLE.

    python repro.py pii                                    # the demo: MLE and conditional training, one seed
    python repro.py pii --seeds=42,43,44,45                # the same over four seeds: intervals over the seeds
    python repro.py pii --seeds=42,43,44,45,46 --guidance=1,2   # also sample cond with guidance
    python repro.py pii --methods=all --extra=--max_tokens=256000   # six methods, mask, cond_k5 and mle_reinit at
                                                           # a quarter of the demo's budget
    python repro.py pep8 --methods=all                     # PEP8 on the standard library
    python repro.py pep8 --size=gpu --methods=all          # a model and budget for one GPU

--size=cpu (the default) is a model and budget for 2 CPU cores; it trains on a GPU where there is one. The report
opens with the verdict: what the conditional model's control tokens do (one model, so one seed decides it), then
conditional training against MLE (two models: decided over seeds, since a second training run of one recipe moves the
figures as far as the methods differ). Every step line carries the whole call's progress and time left.

Results go to out/repro/{task}_{size}/ (--results=DIR for another): results.md (the verdicts and the table),
results.json, plot_score_vs_tokens.png and plot_pareto.png (score against KL from the MLE model of the same seed),
settings.json, and each run's directory seed{S}/{method} (guided evaluations of the conditional model:
seed{S}/cond_guided{γ}; RUN_SPECS: cond_k5 is conditional training with K = 5 graded control tokens, mle_reinit MLE
again from other initial weights). With several seeds, each method's per-seed differences from MLE (and from
mle_reinit, where it ran) get a paired t interval. A run trained and evaluated to its last step is skipped; an
interrupted one is resumed; a results folder made with other settings is refused.
"""
import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

import data
import devices
import reports
from reports import RUNS, ReproError, guided_spec, run_spec
from runs import evaluated, record_step
from settings import ConfigError, eval_scenarios, load_config, steps_in_budget

SIZES = {  # config overlay on top of config/{task}_{method}.py
    'cpu': ['config/cpu_small.py'],
    'gpu': ['config/gpu_small.py'],
}
TASK_SIZE = {
    # per task and size: prepare.py arguments (only as much text as the budget needs) and more training arguments
    # PII on CPU (the demo): 1,024K tokens, of 256K, 512K and 1,024K the only budget at which the models are past
    # word salad in every seed measured; 512 samples per scenario keep it within 15 minutes on 2 cores
    ('pii', 'cpu'): dict(prepare=['--source=local', '--max_bytes=16M'],
                         train=['--eval_samples=512', '--max_tokens=1024000']),
    ('pii', 'gpu'): dict(prepare=['--source=local'], train=[]),
    ('pep8', 'cpu'): dict(prepare=['--source=local'], train=[]),
    ('pep8', 'gpu'): dict(prepare=['--source=local+site'], train=[]),
}


# ----------------------------------------------------------------------------------------------------------------
# The children (prepare.py, train.py, evaluate.py): their output passed through, with the whole call's progress

@dataclass
class Job:
    """One child this call runs: data preparation, a training run (from first_step to final_step, evaluated at the
    end unless its evaluation is a job of its own), or the evaluation of a trained model. samples: what it draws,
    KL reference samples included."""
    label: str
    command: list  # the script and its arguments, but --resume and --kl_reference, which child_argv decides
    run_dir: str = ''
    first_step: int = 0
    final_step: int = 0
    samples: int = 0
    kl_reference: str = ''


def child_argv(job):
    """A training run is resumed where an interrupted one left its checkpoint; the KL reference is passed once it has
    been trained."""
    argv = list(job.command)
    if argv[0] == 'train.py' and os.path.exists(os.path.join(job.run_dir, 'ckpt.pt')):
        argv.append('--resume=True')
    if job.kl_reference and os.path.exists(job.kl_reference):
        argv.append(f'--kl_reference={job.kl_reference}')
    return argv


def run_stage(jobs, progress, threads=None):
    """Run a stage's jobs at once, each `python script ...` in a session of its own (so that a Ctrl-C reaches it once,
    from here: stop_children), with `threads` CPU threads each where given. Their stdout is passed through line by
    line, prefixed by the job's label when several run, train.py's step lines with the whole call's progress."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    lines, children = queue.Queue(), []
    progress.start(jobs)
    for job in jobs:
        argv = child_argv(job)
        print('$ ' + ' '.join(argv), flush=True)
        child = subprocess.Popen([sys.executable] + argv, stdout=subprocess.PIPE, text=True, bufsize=1,
                                 start_new_session=True, env=env)
        threading.Thread(target=pump, args=(child, job, lines), daemon=True).start()
        children.append(child)
    running = {id(job) for job in jobs}  # whose output has not ended
    try:
        pass_through(lines, running, progress, prefix=len(jobs) > 1)
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        stop_children(children, lines, running, progress)
        raise
    failed = [job.command[0] + (f" ({job.label})" if len(jobs) > 1 else '') + f" exited with status {code}"
              for job, code in zip(jobs, codes) if code]
    if failed:  # their own error messages are above; what finished is kept
        raise ReproError(f"{'; '.join(failed)}; once {'its' if len(failed) == 1 else 'the'} cause is fixed, the same "
                         f"repro.py command goes on from there (finished runs are kept)")


def pump(child, job, lines):
    for line in child.stdout:
        lines.put((job, line.rstrip('\n')))
    lines.put((job, None))  # its output has ended: it is exiting


def pass_through(lines, running, progress, prefix):
    """Print the children's lines as they come, until every one in running has ended its output."""
    while running:
        job, line = lines.get()
        if line is None:
            running.discard(id(job))
            progress.finish(job)
        else:
            print((f"[{job.label}] " if prefix else '') + progress.on_line(job, line), flush=True)


def stop_children(children, lines, running, progress):
    """Pass an interrupt on to each child still running and wait for them to exit; each further Ctrl-C is passed on
    too (train.py then stops at once)."""
    alive = [child for child in children if child.poll() is None]
    print(f"\ninterrupted: waiting for {', '.join(child.args[1] for child in alive)} to save and exit (Ctrl-C again "
          f"stops at once)", file=sys.stderr, flush=True)
    while True:
        try:
            for child in alive:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
            pass_through(lines, running, progress, prefix=len(children) > 1)
            for child in alive:
                child.wait()
            return
        except KeyboardInterrupt:
            continue


def stop_as_interrupted(signum, frame):
    raise KeyboardInterrupt


class Progress:
    """The whole call's progress, added to each line a training run prints after logging a step (its log.jsonl):
    which stage of how many, and about how long the rest takes. A stage's jobs run at once: it lasts as long as its
    longest job, which costs its training steps at the seconds a step has taken so far in this call with as many jobs
    at once, and its samples at the seconds a sample took; until a sample has been timed it counts SAMPLE_STEPS steps
    of one job alone."""
    SAMPLE_STEPS = 0.2  # the demo on CPU: a 1,024-token training step takes about as long as 5 samples drawn and scored

    def __init__(self, stages, t0, announce=True):
        self.stages, self.t0, self.announce = stages, t0, announce  # t0: the call's start (data preparation counts)
        self.step_s, self.sample_s = {}, None  # seconds a step takes with n jobs at once: step_s[n]
        self.current, self.timed, self.stage_t0 = -1, {}, time.time()
        self.log_read = {}  # per job: (bytes of its log.jsonl read, the last step logged)

    def start(self, jobs):
        """A stage begins: print where the whole call is."""
        self.current = next(i for i, stage in enumerate(self.stages) if stage is jobs)
        self.timed, self.stage_t0 = {}, time.time()  # per job: (time, step) of its first and its latest step line
        for job in jobs:  # what a resumed run logged before is where it starts, not progress
            self.logged_step(job)
        if self.announce:
            labels = ', '.join(job.label for job in jobs)
            print(f"== stage {self.current + 1} of {len(self.stages)}: {labels}; {self.summary()}", flush=True)

    def logged_step(self, job):
        """The last step a training job has logged in its log.jsonl (None if none), reading on from the last look."""
        read, step = self.log_read.get(id(job), (0, None))
        path = os.path.join(job.run_dir, 'log.jsonl')
        if job.command[0] == 'train.py' and os.path.exists(path):
            with open(path, 'rb') as f:
                f.seek(read)
                for line in f:
                    if not line.endswith(b'\n'):
                        break  # being written: read again at the next look
                    read += len(line)
                    logged = record_step(line.decode())
                    step = step if logged is None else logged
        self.log_read[id(job)] = (read, step)
        return step

    def on_line(self, job, line):
        before = self.log_read.get(id(job), (0, None))[1]
        step = self.logged_step(job)
        if step is None or step == before:
            return line
        now = time.time()
        first, _ = self.timed.get(id(job), ((now, step), None))
        if step > first[1]:  # the first line's time also holds the run's start-up: timed from it on
            self.step_s[len(self.stages[self.current])] = (now - first[0]) / (step - first[1])
        self.timed[id(job)] = (first, (now, step))
        return f"{line} | {self.summary()}"

    def finish(self, job):
        """A job's output has ended: what it took after its last step was its evaluation, which times a sample."""
        if job.samples and job.command[0] != 'prepare.py':
            last = self.timed.get(id(job), (None, (self.stage_t0, 0)))[1]
            self.sample_s = (time.time() - last[0]) / job.samples

    def job_left(self, job, step_s, sample_s, now=None):
        timed = self.timed.get(id(job)) if now else None
        done = timed[1][1] if timed else job.first_step
        left = (job.final_step - done) * step_s + job.samples * sample_s
        if timed and done == job.final_step:  # evaluating: part of its samples may be drawn already
            left = max(0.0, left - (now - timed[1][0]))
        return left

    def seconds_left(self):
        """The rest of the current stage and the stages after it; None until a training step has been timed."""
        if not self.step_s:
            return None
        alone = min(t / n for n, t in self.step_s.items())  # a step with every core (side by side, per job and n)
        step_s = lambda n: self.step_s.get(n, alone * n)
        sample_s = self.sample_s if self.sample_s is not None else self.SAMPLE_STEPS * alone
        now = time.time()
        return sum(max(self.job_left(job, step_s(len(stage)), sample_s, now if i == self.current else None)
                       for job in stage) for i, stage in enumerate(self.stages) if i >= self.current)

    def summary(self):
        left = self.seconds_left()
        eta = 'the time left is known after the first steps' if left is None else f"about {left / 60:.1f} min left"
        return (f"all: stage {self.current + 1} of {len(self.stages)}, {(time.time() - self.t0) / 60:.1f} min so far, "
                f"{eta}")


def last_logged_step(run_dir):
    """The last training step an interrupted run logged (0 if none): where its resume starts, about."""
    path = os.path.join(run_dir, 'log.jsonl')
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max([s for s in map(record_step, f) if s is not None], default=0)


def last_setting(train_args, key, default):
    """A train.py setting as the --key=value arguments give it (the last one counts; config files do not set these)."""
    return ([a.split('=', 1)[1] for a in train_args if a.startswith(f'--{key}=')] or [default])[-1]


def training_device_and_dtype(train_args):
    """(device type, dtype) the runs will train on: what --device and --dtype say, else what 'auto' means on this
    machine (a GPU if there is one; bf16 on a GPU, or on a CPU with native bf16). settings.json records both, so
    that one results folder does not mix float32 and bf16 runs, or CPU and GPU ones."""
    device = last_setting(train_args, 'device', 'auto')
    device_type = devices.default_device() if device == 'auto' else device.split(':')[0]
    dtype = last_setting(train_args, 'dtype', 'auto')
    return device_type, devices.default_dtype(device_type) if dtype == 'auto' else dtype


def check_settings(results, settings):
    """Refuse to mix runs made with other settings in one results folder; record the settings on first use."""
    path = os.path.join(results, 'settings.json')
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            changed = ', '.join(k for k in settings if old.get(k) != settings[k])
            raise ReproError(f"{results} holds runs made with other settings ({changed} differ, see {path}); pass "
                             f"--results=ANOTHER_DIR or delete it")
        return
    data.write_json(path, settings, indent=1)


def training_argv(task, name, seed, results, train_args, median):
    """train.py's arguments for one method's (or variant's) run of a seed."""
    spec = run_spec(name)
    return [f'config/{task}_{spec.config}.py'] + train_args + list(spec.train_args) + [
        f"--out_dir={os.path.join(results, f'seed{seed}', name)}", f'--seed={seed}', f'--filter_threshold={median}']


def training_jobs(task, name, seed, results, train_args, median, mle_planned, separate_eval):
    """(training Job, evaluation Job) of one method's (or variant's) run, either None when done. An interrupted run's
    evaluations are of earlier steps: only one of its final step counts as done. separate_eval: the run trains
    without evaluating and evaluate.py evaluates it afterwards (runs trained side by side); else the run evaluates
    itself at its end (a resumed run that was trained but not evaluated only evaluates)."""
    run_dir = os.path.join(results, f'seed{seed}', name)
    argv = training_argv(task, name, seed, results, train_args, median)
    cfg = load_config(argv)
    final_step = steps_in_budget(cfg)
    if evaluated(run_dir, final_step):
        print(f"{run_dir}: already evaluated, skipping (delete it to re-run)", flush=True)
        return None, None
    # the seed's MLE model is the KL reference of the others
    mle_ckpt = os.path.join(results, f'seed{seed}', 'mle', 'ckpt.pt') if name != 'mle' else ''
    kl = mle_ckpt and (mle_planned or os.path.exists(mle_ckpt))
    samples = cfg.eval_samples * len(eval_scenarios(cfg)) + (cfg.kl_samples if kl else 0)
    label, first_step = f"seed {seed} {name}", last_logged_step(run_dir)
    if not separate_eval:
        return Job(label, ['train.py'] + argv, run_dir, first_step, final_step, samples, mle_ckpt), None
    trained = first_step >= final_step and os.path.exists(os.path.join(run_dir, 'ckpt.pt'))
    train = None if trained else Job(label, ['train.py'] + argv + ['--eval_samples=0', '--eval_iters=0'], run_dir,
                                     first_step, final_step)
    evaluation = Job(f"{label}, evaluation", ['evaluate.py', f"--ckpt={os.path.join(run_dir, 'ckpt.pt')}",
                                             f'--out_dir={run_dir}', f'--eval_samples={cfg.eval_samples}',
                                             f'--eval_iters={cfg.eval_iters}', f'--kl_samples={cfg.kl_samples}'],
                     run_dir, samples=samples, kl_reference=mle_ckpt)
    return train, evaluation


def guided_job(seed, results, guidance, cond_cfg):
    """The Job that samples a seed's conditional model again, with guidance, into seed{S}/cond_guided{γ}
    (evaluate.py): its unconditional scenario and KL from the seed's MLE model, no validation loss (the weights are
    cond's); None if it is done."""
    seed_dir = os.path.join(results, f'seed{seed}')
    out = os.path.join(seed_dir, guided_spec(guidance).name)
    if os.path.exists(os.path.join(out, 'eval.jsonl')):
        print(f"{out}: already evaluated, skipping (delete it to re-run)", flush=True)
        return None
    argv = ['evaluate.py', f"--ckpt={os.path.join(seed_dir, 'cond', 'ckpt.pt')}", f'--out_dir={out}',
            f'--eval_guidance={guidance}', '--eval_scenarios=unconditional', '--eval_iters=0',
            f'--eval_samples={cond_cfg.eval_samples}', f'--kl_samples={cond_cfg.kl_samples}',
            f"--kl_reference={os.path.join(seed_dir, 'mle', 'ckpt.pt')}"]
    samples = cond_cfg.eval_samples + cond_cfg.kl_samples
    return Job(f"seed {seed} cond, guided γ={guidance:g}", argv, out, samples=samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('task', choices=['pep8', 'pii'])
    p.add_argument('--size', choices=list(SIZES), default='cpu')
    p.add_argument('--methods', default='mle,cond', help=f"comma-separated from {', '.join(RUNS)}, or 'all'")
    p.add_argument('--seeds', default='42', help='comma-separated seeds; each method is trained once per seed')
    p.add_argument('--data_dir', default=None, help='default data/local_{size}')
    p.add_argument('--results', default=None, help='default out/repro/{task}_{size}')
    p.add_argument('--extra', default='', help='more --key=value arguments for train.py, space-separated')
    p.add_argument('--guidance', default='', help='comma-separated γ: also sample each cond model with guidance γ')
    p.add_argument('--side_by_side', type=int, default=0, help='training runs at once (default: 2 on a CPU with 2 '
                   'cores or more, each with half of them; 1 on a GPU)')
    args = p.parse_args(argv)
    methods = RUNS if args.methods == 'all' else tuple(args.methods.split(','))
    unknown = set(methods) - set(RUNS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(RUNS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(',')]
    except ValueError:
        p.error(f"--seeds={args.seeds}: expected integers separated by commas")
    try:
        args.guidance = [float(g) for g in args.guidance.split(',') if g.strip()]
    except ValueError:
        p.error(f"--guidance={args.guidance}: expected numbers separated by commas")
    if args.guidance and 'cond' not in methods:
        p.error("--guidance samples the conditional models: add cond to --methods")
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.samefile(here, os.getcwd()):  # it runs train.py and config/ by their relative paths
        p.error(f"run it from the repository's folder: cd {here}")
    command = 'python repro.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    before = signal.signal(signal.SIGTERM, stop_as_interrupted)  # a job scheduler's stop: passed on as a Ctrl-C is
    try:
        run(args, methods, seeds, command)
    except (ReproError, ConfigError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # the training runs in progress saved a checkpoint
        sys.exit(f"interrupted; `{command}` goes on from where it stopped")
    finally:
        signal.signal(signal.SIGTERM, before)


def run(args, methods, seeds, command):
    t0 = time.time()
    plan = TASK_SIZE[args.task, args.size]
    data_dir = args.data_dir or f'data/local_{args.size}'
    results = args.results or f"out/repro/{args.task}_{args.size}"
    split = os.path.join(data_dir, args.task, 'train')
    if not os.path.exists(os.path.join(split, 'header.json')):
        print(f"== preparing the {args.task} data into {data_dir}/{args.task}, then the runs", flush=True)
        prepare = [Job('prepare', ['prepare.py', args.task, f'--out_dir={os.path.join(data_dir, args.task)}'] +
                       plan['prepare'])]
        run_stage(prepare, Progress([prepare], t0, announce=False))
    train_data = data.PreparedData(split)
    train_args = SIZES[args.size] + plan['train'] + [f'--data_dir={data_dir}'] + args.extra.split()
    # filtering at the median document score drops about half the documents (reference §1.2)
    median = float(np.median(np.asarray(train_data.doc_scores)))
    for name in methods:  # a setting train.py would refuse is refused before anything runs
        load_config(training_argv(args.task, name, seeds[0], results, train_args, median))
    device_type, dtype = training_device_and_dtype(train_args)
    check_settings(results, dict(task=args.task, size=args.size, train_args=train_args, data=train_data.header,
                                 dtype=dtype, device=device_type))
    # on a CPU two runs train side by side, a thread each per core pair: more tokens/s in all than one at a time
    side_by_side = args.side_by_side or (2 if device_type == 'cpu' and os.cpu_count() >= 2 else 1)
    stages = plan_stages(args, methods, seeds, results, train_args, median, side_by_side)
    progress = Progress(stages, t0)
    for stage in stages:
        run_stage(stage, progress, threads=max(1, os.cpu_count() // len(stage)) if len(stage) > 1 else None)
    setting = (f"training tokens {train_data.n_tokens:,} ({train_data.header['source']}); filter threshold (median "
               f"document score) {median:.5g}; this call ran on {devices.describe(device_type)}, training in {dtype}, "
               f"{(time.time() - t0) / 60:.1f} min")
    names = list(methods) + [guided_spec(g).name for g in args.guidance if g]
    reports.write_report(results, seeds, names, dict(task=args.task, size=args.size, command=command, setting=setting,
                                                     filter_threshold=median))


def plan_stages(args, methods, seeds, results, train_args, median, side_by_side):
    """What this call still has to run, in stages whose jobs run at once: per seed, the methods' training runs,
    side_by_side at a time (MLE first: the KL reference of the others), each evaluating itself at its end; or, where
    runs train side by side, evaluated by evaluate.py afterwards, one at a time with every core (the KL reference is
    trained by then); then the conditional model's guided evaluations."""
    stages = []
    for seed in seeds:
        runs = [training_jobs(args.task, name, seed, results, train_args, median, 'mle' in methods, side_by_side > 1)
                for name in sorted(methods, key=lambda m: m != 'mle')]
        trainings = [train for train, _ in runs if train]
        stages += [trainings[i:i + side_by_side] for i in range(0, len(trainings), side_by_side)]
        stages += [[evaluation] for _, evaluation in runs if evaluation]
        cond_cfg = load_config([f'config/{args.task}_cond.py'] + train_args)
        guided = [guided_job(seed, results, g, cond_cfg) for g in args.guidance if g]  # γ = 0: the cond run itself
        stages += [[job] for job in guided if job]
    return stages


if __name__ == '__main__':
    main()
