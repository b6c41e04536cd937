# Shared by the device session scripts (sourced, after they set SMOKE): the wheels the GPU machine lacks, the GPU
# count, and two ways to place a job: on_gpu K (job K on GPU K mod NGPU) and launch (accelerate over all GPUs).
# Every wheel carried in .wheels is installed: a call that needs no gsplat (e.g. scoring a teacher: the torch splatter
# renders) may leave its 6.5 MB out of .wheels to fit within what a call carries, and skips its build.
wanted="diffusers, datasets$(compgen -G '.wheels/gsplat-*.whl' > /dev/null && echo ', gsplat' || true)"
python3 -c "import $wanted" 2>/dev/null || python3 -m pip install -q --no-index --find-links .wheels .wheels/*.whl
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export NGPU=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
on_gpu() { local k=$1; shift; CUDA_VISIBLE_DEVICES=$(( k % NGPU )) "$@"; }  # job k on GPU k mod NGPU
launch() {  # accelerate launch over all GPUs (one process without CUDA)
    if [ "$NGPU" -gt 1 ] && [ -z "$SMOKE" ]; then
        python3 -m accelerate.commands.launch --config_file training/accelerate/multi_gpu.yaml --num_processes "$NGPU" "$@"
    else python3 "$@"; fi
}
