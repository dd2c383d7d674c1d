"""``python -m patchscaler.info``, the documented spelling (also what `.ci/run` imports
`build_info` from): the report lives in `patchscaler.command.info`."""

from patchscaler.command.info import basic_info, build_info, main, sampler_table, shipped_weights, torch_info  # noqa: F401

if __name__ == "__main__":
    main()
