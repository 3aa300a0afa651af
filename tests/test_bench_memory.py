"""`python -m bench.memory`: runs on the tiny config and prints its table; the 7B config refuses a CPU run in one
line that says what it would need."""
from __future__ import annotations

from bench import memory
from common.cli import run_main


def test_memory_bench_prints_its_table_on_the_tiny_config(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per table row
    status = run_main(memory.main, ["--config", "tiny", "--batch-pairs", "2", "--lens-batch", "2", "--threads", "1",
                                    "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0
    for heading in ("peak", "s per 100 pairs", "s per item", "logit lens", "Patch Text"):
        assert heading in out


def test_the_7b_config_refuses_a_cpu_run_in_one_line(capsys):
    status = run_main(memory.main, ["--config", "qwen2-audio-7b", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "8.4 B parameters" in err and "--device cuda" in err


def test_the_7b_config_is_qwen2_audio_7b_instructs_shape():
    config = memory.qwen2_audio_7b_config(audio_token_id=4)
    text, audio = config.text_config, config.audio_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size, text.vocab_size) == (32, 4096, 11008,
                                                                                                  156032)
    assert (text.num_attention_heads, text.num_key_value_heads) == (32, 32)
    assert (audio.encoder_layers, audio.d_model, audio.encoder_attention_heads, audio.encoder_ffn_dim,
            audio.num_mel_bins, audio.max_source_positions) == (32, 1280, 20, 5120, 128, 1500)
    assert memory.parameter_count(config) == 8_397_094_912
