# Sourced by the end-to-end tests: configs/tiny.yaml narrowed so that a multi-rank run takes
# seconds (hidden 64, 8 routed experts of width 32, 2 per token in 4 groups, seq_len 32, one
# thread, 2 warm-up steps, quiet progress lines). Each test adds its own batch and run settings.
SMALL_MODEL=(--set model.hidden_size=64 --set model.intermediate_size=128
             --set model.moe_intermediate_size=32 --set model.n_routed_experts=8
             --set model.n_group=4 --set model.topk_group=2 --set model.num_experts_per_tok=2
             --set model.q_lora_rank=32 --set model.kv_lora_rank=24 --set data.seq_len=32
             --set run.threads=1 --set schedule.lr.warmup_steps=2 --set run.log_interval=100)
