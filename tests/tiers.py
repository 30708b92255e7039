"""Which tests run in the extended tier (``python -m pytest -m extended``) instead of the default one.

The default tier (``python -m pytest``) keeps every module, every command, each backend's parity on
the tiny models, the bad-input tables, one real TensorRT-RTX build and the Triton interpreter in
fp32: what a change most often breaks. The extended tier (CI runs it after the default one) holds
the rest: more shapes, schedulers, dtypes and families of the same checks, full-size merges, every
compute capability's ahead-of-time compilation, and slower robustness scenarios. Each entry is a
node-id pattern (``*`` stands for any text, everything else is literal) and why it is extended rather than default.
"""

from __future__ import annotations

EXTENDED: dict[str, str] = {
    # models
    "tests/models/test_merge.py::test_full_size_merge_matches_diffusers_reference*":
        "full-size UNets through PEFT (100 s)",
    "tests/models/test_merge.py::test_every_variant_merges_into_its_family*":
        "builds full-size UNets (27 s); every official adapter is still read and checked by default in test_adapter",
    "tests/models/test_merge.py::test_other_family_is_refused_with_hint": "uses the full-size UNets above",
    "tests/models/test_tiny_builtins.py::test_builtin_controlnet_and_ip_adapter_run_offline_from_the_cli":
        "an export with a ControlNet and an IP-Adapter (79 s on the shared 2 cores); both built-ins are loaded and checked by default",
    # export
    "tests/export/test_export.py::test_baked_unet_matches_merged_pytorch_off_trace[1000-600-1-*":
        "a third size; 328x200x3 and 512x384x2 stay",
    "tests/export/test_export.py::test_fp16_export_keeps_groupnorm_fp32_and_matches_fp32_pytorch":
        "fp16 export with dynamic alpha stays by default",
    "tests/export/test_export.py::test_unet_only_export": "a UNet-only model is exported by default in test_engines",
    "tests/export/test_export.py::test_graph_without_skip_sized_upsampling_breaks_on_odd_sizes":
        "a counter-example (the old graph breaking); odd sizes themselves are validated by default",
    "tests/export/test_export_memory.py::test_a_whole_export_past_the_limit_is_validated_and_loadable":
        "the streaming writer is covered by the two unit tests beside it",
    "tests/export/test_interop.py::test_consumers_config_loaders_read_the_export[sdxl]": "sd15 stays",
    # engines
    "tests/engines/test_gpu_check.py::test_documented_prepare_carry_holds_only_cp312_wheels_within_the_limit":
        "downloads the GPU carry from PyPI (network; skips without it); the wheel-tag logic stays by default, offline",
    "tests/engines/test_rtx_builds.py::test_sdxl_fp32_dynamic_build_via_cli_then_cache_hit*":
        "a second real build (SDXL); the SD1.5 one stays",
    "tests/engines/test_rtx_builds.py::test_user_file_in_kept_export_survives_a_rebuild_request":
        "uses the SDXL build above",
    "tests/engines/test_rtx_builds.py::test_sd15_with_a_controlnet_builds*": "a third real build",
    "tests/engines/test_rtx_builds.py::test_sd15_with_an_ip_adapter_builds*": "a fourth real build",
    # kernels
    "tests/kernels/test_aot.py::*": "ptxas for five compute capabilities (40 s); the kernels' numerics stay by default",
    "tests/kernels/test_kernels.py::test_kernels_match_float64_on_odd_shapes_with_mean_offset*dtype1*":
        "fp16 under the interpreter; fp32 covers every shape, layout, activation and path by default",
    "tests/kernels/test_kernels.py::test_kernels_match_float64_on_odd_shapes_with_mean_offset*dtype2*": "bf16, as above",
    "tests/kernels/test_kernels.py::test_torch_backend_switch_gives_the_same_images":
        "whole generations with the kernel switched in; the per-module switch test stays",
    "tests/kernels/test_kernels.py::test_cuda_target_export_contains_fused_group_norm":
        "a whole cuda-target export (23 s); the fusion itself stays in test_switch_replaces_pairs_and_keeps_outputs",
    # runtime
    "tests/runtime/test_runtime.py::test_final_latents_match_diffusers_pipeline[torch-sd15-dpm*":
        "each backend keeps one SD1.5 and one SDXL case by default",
    "tests/runtime/test_runtime.py::test_final_latents_match_diffusers_pipeline[onnxruntime-sd15-dpm*": "as above",
    "tests/runtime/test_runtime.py::test_final_latents_match_diffusers_pipeline[torch-sdxl-dpm*": "as above",
    "tests/runtime/test_runtime.py::test_final_latents_match_diffusers_pipeline[onnxruntime-sdxl-ddim*": "as above",
    "tests/runtime/test_runtime.py::test_lcm_lora_stacked_at_export_with_lcm_scheduler":
        "LoRA stacking stays by default in test_merge (diffusers multi-adapter parity)",
    "tests/runtime/test_trust.py::test_sdxl_force_zeros_for_empty_prompt_comes_from_the_model": "an SDXL export of its own",
    "tests/runtime/test_trust.py::test_a_vanished_local_source_never_falls_back_to_the_hub":
        "each trust test exports; rebuild-from-recorded-paths and an edited adapter stay",
    "tests/runtime/test_trust.py::test_edited_model_file_is_refused_by_name": "as above",
    "tests/runtime/test_ip_adapter.py::test_one_export_serves_every_scale_as_exports_baked_at_each":
        "exports at three baked scales (34 s); runtime-scale parity with diffusers stays",
    "tests/runtime/test_prompt_weighting.py::test_compel_syntax_image_matches_diffusers_given_compel_of_the_prompt":
        "a second image parity; compel's syntax stays by default in the parser, bit-identity and SDXL runner tests",
    "tests/runtime/test_prompt_weighting.py::test_generate_cli_records_the_weighting":
        "a whole CLI generation; the option's checks stay by default (before any export is opened)",
    "tests/runtime/test_prompt_weighting.py::test_long_weighted_prompt_matches_diffusers":
        "two-chunk image parity; two-chunk weighted embeddings stay by default (runner and tail tests)",
    "tests/runtime/test_prompt_weighting.py::test_sdxl_weighted_images_match_diffusers_with_compel_embeddings":
        "an SDXL export of its own; the SD1.5 image parity stays by default",
    "tests/runtime/test_prompt_weighting.py::test_compel_over_a_runner_equals_compel_over_the_pytorch_encoder[sdxl]":
        "SDXL's two encoders (6 s); the SD1.5 one stays, SDXL is checked end to end in the extended image test",
    "tests/runtime/test_prompt_weighting.py::test_other_backends_weighted_parity_and_unweighted_bit_identity*":
        "torch and openvino pipelines; onnxruntime stays by default, all three share compel_encoders.py",
    "tests/runtime/test_ip_adapter.py::test_dynamic_alpha_with_a_controlnet_matches_diffusers":
        "an SDXL ControlNet + IP-Adapter export of its own",
    "tests/runtime/test_ip_adapter.py::test_final_latents_match_diffusers[torch-sd15-full-face*":
        "full-face and plus variants stay by default on ONNX Runtime",
    "tests/runtime/test_ip_adapter.py::test_final_latents_match_diffusers[torch-sd15-plus*": "as above",
    "tests/runtime/test_ip_adapter.py::test_final_latents_match_diffusers[torch-sd15-plain-family*-i2i]":
        "the torch backend keeps text-to-image and inpainting; every mode stays on ONNX Runtime",
    "tests/runtime/test_ip_adapter.py::test_final_latents_match_diffusers[torch-sdxl-plain-family*-inpaint]": "as above",
    "tests/runtime/test_ip_adapter.py::test_final_latents_match_diffusers[torch-sdxl-plain-family*-i2i]": "as above",
    "tests/runtime/test_tiling.py::test_full_size_panorama_matches_diffusers*":
        "diffusers' own 512 px windows (9 and 12 of them); the same parity at 128 px windows stays",
    "tests/runtime/test_tiling.py::test_every_call_stays_inside_the_exports_range*":
        "2048x2048 and 4096x1024 generations (25 and 33 windows, 36 and 33 VAE tiles)",
    "tests/runtime/test_tiling.py::test_tiled_vae_decode_at_2048_equals_diffusers":
        "36 diffusers VAE tiles at 512 px; tiled decode/encode parity at 64 px tiles stays",
    "tests/runtime/test_tiling.py::test_hires_fix_is_base_upscale_then_tiled_image_to_image": "three generations up to 1280x640",
    "tests/runtime/test_tiling.py::test_sdxl_with_a_controlnet_in_windows":
        "an SDXL ControlNet export; the per-window time_ids and control crops stay by default (recorded UNet inputs)",
    "tests/engines/test_tiled_inspect.py::*": "a real TensorRT-RTX build (512-1024 px profile)",
    "tests/runtime/test_tiling.py::test_small_panorama_matches_diffusers[True]":
        "circular parity stays at full size in the extended tier; the wrapping windows, crops and sums stay by default",
    "tests/runtime/test_tiling.py::test_every_backend_tiles_alike*":
        "rebuilds the torch networks and compiles OpenVINO; the tiling is backend-independent (it wraps the runners)",
    "tests/runtime/test_controlnet.py::test_sdxl_controlnet_with_dynamic_alpha_matches_diffusers*":
        "an SDXL ControlNet export of its own; SD1.5 ControlNet parity stays on both backends",
    "tests/runtime/test_controlnet.py::test_final_latents_match_diffusers_controlnet_pipeline[*-one-264-392-euler]":
        "a third size; 256x256 and the odd 264x392 with two ControlNets stay",
    "tests/runtime/test_controlnet.py::test_large_odd_latent_840x1000*": "a large latent; odd sizes stay at 264x392",
    "tests/runtime/test_controlnet.py::test_final_latents_match_diffusers_controlnet_pipeline[torch-two-328-200-dpm*":
        "a second scheduler on the torch backend; it stays on ONNX Runtime",
    "tests/runtime/test_controlnet.py::test_guidance_windows_match_diffusers[torch]": "stays on ONNX Runtime",
    # cli
    "tests/cli/test_ip_adapter_cli.py::test_generate_inpainting_with_an_image_prompt_records_it":
        "48 s of generation; the IP-Adapter CLI export and bad-input tables stay",
    "tests/cli/test_data_safety.py::test_concurrent_exports_into_one_directory_cannot_both_succeed":
        "two export subprocesses; the held-lock refusal stays",
    # serve
    "tests/serve/test_serve.py::test_readiness_is_false_while_no_replica_can_serve":
        "kills every replica and waits for recovery (20 s); the one-replica restart stays",
    "tests/serve/test_serve.py::test_full_queue_gives_503_at_once": "holds the replicas busy (9 s); the 400s and 504 stay",
    "tests/serve/test_serve.py::test_image_equals_cli_generate[json]": "the binary tensor coding stays",
    "tests/serve/test_serve_cli.py::test_sigterm_drains_the_request_in_flight_then_exits_0*":
        "starts the serve command in a subprocess twice (about a minute each); the drain itself stays by default in test_drain.py",
    "tests/serve/test_multinode.py::test_worker_node_removed_under_load_then_capacity_returns":
        "a three-node Ray cluster on this machine, a node removed and one added under load (minutes)",
    # training
    "tests/training/test_distributed.py::*":
        "torchrun and accelerate launch start gloo process groups (30 s wall unloaded, 2.5 min at load 9); "
        "one-process parity of accumulation, cache and checkpointing stays in test_scale",
}
