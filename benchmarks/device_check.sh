#!/usr/bin/env bash
# The one prepared GPU check, for a session that is lent a device machine (about 8 minutes).
#
# What it checks on CUDA, each part's output in $OUT/<part>.log and a summary in $OUT/summary.txt:
#   1. train:      the CLI with +method=X +reco=on for one short epoch of the bundled digits,
#                  at 16-mixed and bf16-mixed, views made on the CPU and on the device
#                  (dataset.augment_on=device); every run must end with a finite kNN
#   2. step_cost:  ReCo on / off per training step against the compute floor
#                  (benchmarks/step_cost.py --device cuda), fp32 and bf16
#   3. throughput: whole step against model work, views on the CPU and on the device
#                  (benchmarks/train_throughput.py --device cuda)
#   4. peers:      our steps against lightly's (benchmarks/peers.py --device cuda --check),
#                  only where lightly's wheels travelled in .whl/
#
# The device image has torch, torchvision, lightning and torchmetrics but not hydra-core and
# omegaconf; bring their wheels (pure Python) once, here, in the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
#
# and run it with the device tool: command "bash benchmarks/device_check.sh", carry [".whl"],
# timeout_s 560. CHECK_PARTS="train step_cost" runs only those parts, CHECK_METHODS="moco" one method. It also runs on a CPU
# (DEVICE=cpu) with tiny sizes, which is how it is tested here before a lease.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
DEVICE="${DEVICE:-cuda}"
PARTS="${CHECK_PARTS:-train step_cost throughput peers}"
METHODS="${CHECK_METHODS:-moco simclr byol}"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'EOF' 2>&1 | tee -a "$summary"
import torch, lightning, torchvision, hydra, omegaconf
print(f"torch {torch.__version__}, lightning {lightning.__version__}, torchvision {torchvision.__version__}, "
      f"hydra {hydra.__version__}, omegaconf {omegaconf.__version__}")
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

if [ "$DEVICE" = cuda ]; then
    accelerator=gpu; width=64; batch=256; steps=10; rounds=3; batches=40
else  # a dry run of the script itself on a CPU
    accelerator=cpu; width=8; batch=32; steps=1; rounds=1; batches=2
fi

run_part() {  # name, command...: run, log, and record the exit status
    local name="$1"; shift
    local start=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $((SECONDS - start)) s"
    return 0
}

case " $PARTS " in *" train "*)
    for method in $METHODS; do
        for precision in 16-mixed bf16-mixed; do
            for views in cpu device; do
                name="train_${method}_${precision}_${views}"
                run_part "$name" timeout 120 python3 -m reco_lightning "+method=$method" +reco=on \
                    "trainer.accelerator=$accelerator" "trainer.precision=$precision" trainer.max_epochs=1 \
                    "trainer.limit_train_batches=$batches" "dataset.augment_on=$views" pictures=false \
                    trainer.enable_progress_bar=false "hydra.run.dir=$OUT/runs/$name"
                grep -m1 -E "kNN" "$OUT/$name.log" | sed "s/^/  $name: /" | tee -a "$summary"
                rm -rf "$OUT/runs/$name/checkpoints"
            done
        done
    done
    rm -rf "$OUT/runs"
esac

case " $PARTS " in *" step_cost "*)
    for precision in 32 bf16; do
        run_part "step_cost_$precision" timeout 150 python3 benchmarks/step_cost.py --device "$DEVICE" \
            --width "$width" --batch-size "$batch" --steps "$steps" --rounds "$rounds" --precision "$precision"
        tail -n 8 "$OUT/step_cost_$precision.log" >>"$summary"
    done
esac

case " $PARTS " in *" throughput "*)
    run_part throughput timeout 150 python3 benchmarks/train_throughput.py --device "$DEVICE" --methods moco \
        --width "$width" --batch-size "$batch" --steps "$steps" --rounds "$rounds" --settle 1
    tail -n 8 "$OUT/throughput.log" >>"$summary"
esac

case " $PARTS " in *" peers "*)
    if python3 -c "import lightly" 2>/dev/null; then
        run_part peers timeout 120 python3 benchmarks/peers.py --device "$DEVICE" --check \
            --width "$width" --batch-size "$batch" --rounds "$rounds"
        tail -n 8 "$OUT/peers.log" >>"$summary"
    else
        note "peers: skipped (lightly's wheels did not travel in .whl/)"
    fi
esac
note "done; logs in $OUT"
