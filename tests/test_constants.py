"""The numbers numba freezes into the kernels are copies (numba reads module globals at compile
time): each copy must equal the one owner's, or the kernels would decode another format."""

from llmcodec import dtypes, format, kernels


def test_kernels_methods_are_the_specs():
    assert (kernels.RAW, kernels.CONSTANT, kernels.RANS0, kernels.RANS0_PAIRS) == (
        format.METHOD_RAW, format.METHOD_CONSTANT, format.METHOD_RANS0, format.METHOD_RANS0_PAIRS)
    assert set(format.METHODS) == {kernels.RAW, kernels.CONSTANT, kernels.RANS0, kernels.RANS0_PAIRS}


def test_kernels_layouts_are_the_dtype_tables():
    assert (kernels.BYTES, kernels.FIELDS16, kernels.FIELDS32, kernels.BLOCK_FIELDS, kernels.BLOCK_QUANTS) == (
        dtypes.LAYOUT_BYTES, dtypes.LAYOUT_FIELDS16, dtypes.LAYOUT_FIELDS32, dtypes.LAYOUT_BLOCK_FIELDS,
        dtypes.LAYOUT_BLOCK_QUANTS)
    assert set(dtypes.LAYOUT_ITEMSIZE) == {kernels.BYTES, kernels.FIELDS16, kernels.FIELDS32, kernels.BLOCK_FIELDS,
                                           kernels.BLOCK_QUANTS}


def test_kernels_block_quant_types_are_the_dtype_tables():
    """split_quants / merge_quants tell the four types apart by their block bytes, and know their bits."""
    joined = {d.name: (d.itemsize, d.quant_bits) for d in dtypes.BY_ID.values() if d.quant_bits}
    assert joined == {"GGML_Q5_0": (kernels.Q5_0_BYTES, 5), "GGML_Q5_1": (kernels.Q5_1_BYTES, 5),
                      "GGML_Q5_K": (kernels.Q5_K_BYTES, 5), "GGML_Q6_K": (kernels.Q6_K_BYTES, 6)}
    for d in dtypes.BY_ID.values():
        if d.quant_bits:
            assert len(d.quant_planes) <= kernels.MAX_PLANES and d.quant_planes[-1] == (d.itemsize, d.block_size)


def test_every_dtype_fits_the_kernels_descriptor_rows():
    """A chunk descriptor has MAX_PLANES columns per plane field: no dtype may have more planes."""
    for d in dtypes.BY_ID.values():
        assert len(dtypes.plane_fields(d, d.default_layout)) <= kernels.MAX_PLANES, d.name
    assert kernels.MAX_PLANES == dtypes.MAX_PLANES
    assert kernels.ROW_FIELDS + kernels.MAX_PLANES == kernels.ROW_DELTA
    assert (kernels.ROW_BASE, kernels.ROW_BASE_CHECKSUM, kernels.ROW_SIZE) == (
        kernels.ROW_DELTA + 1, kernels.ROW_DELTA + 2, kernels.ROW_DELTA + 3)
    columns = [kernels.ROW_METHODS, kernels.ROW_PARAMS, kernels.ROW_LENGTHS, kernels.ROW_WIDTHS, kernels.ROW_FIELDS]
    assert all(b - a == kernels.MAX_PLANES for a, b in zip(columns, columns[1:]))


def test_kernels_table_geometry_is_the_specs():
    assert (kernels.RANS0_TABLE, kernels.PAIRS_TABLE, kernels.MAX_PRECISION, kernels.MAX_PAIR_PRECISION,
            kernels.MAX_LANES) == (format.RANS0_TABLE, format.PAIRS_TABLE, format.MAX_PRECISION,
                                   format.MAX_PAIR_PRECISION, format.MAX_LANES)
    assert kernels.PRECISION <= format.MAX_PRECISION and kernels.PAIR_PRECISION <= format.MAX_PAIR_PRECISION
    assert kernels.ENCODE_LANES <= format.MAX_LANES


def test_every_fault_code_has_a_message():
    from llmcodec import codec

    codes = {v for k, v in vars(kernels).items() if k.startswith(("FAULT_", "DECODE_"))
             and k not in ("FAULT_OK", "DECODE_OK", "FAULT_PLANE_SHIFT", "FAULT_CHECKSUM", "FAULT_BASE")}
    assert codes == set(codec.FAULTS)
    assert kernels.FAULT_CHECKSUM not in codec.FAULTS and kernels.FAULT_BASE not in codec.FAULTS
    assert max(codes | {kernels.FAULT_CHECKSUM, kernels.FAULT_BASE}) < 1 << kernels.FAULT_PLANE_SHIFT


def test_delta_transform_ids_are_the_specs():
    from llmcodec import delta

    assert (kernels.DELTA_DIFF, kernels.DELTA_SUB) == (format.DELTA_DIFF, format.DELTA_SUB)
    assert delta.TRANSFORMS == format.DELTA_TRANSFORMS
