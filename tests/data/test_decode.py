import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ensemble.data.decode import DecodeError, decode_image


def test_grayscale_becomes_rgb(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "g.png")
    arr = decode_image(str(tmp_path / "g.png"))
    assert arr.shape == (3, 4, 3) and arr.dtype == np.uint8 and (arr == 77).all()


def test_rgba_and_palette_transparency_composite_on_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    img.putpixel((1, 0), (10, 20, 30, 0))
    img.save(tmp_path / "a.png")
    arr = decode_image(str(tmp_path / "a.png"))
    assert arr[0, 0].tolist() == [10, 20, 30] and arr[0, 1].tolist() == [255, 255, 255]
    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=1)
    arr = decode_image(str(tmp_path / "p.png"))
    assert arr[0, 0].tolist() == [200, 0, 0] and arr[0, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_and_16bit_png(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red in CMYK
    arr = decode_image(str(tmp_path / "c.jpg")).astype(int)
    assert arr.shape == (8, 8, 3) and arr[..., 0].min() > 240 and arr[..., 1:].max() < 15
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    wide.save(tmp_path / "w.png")
    assert decode_image(str(tmp_path / "w.png"))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    arr = decode_image(str(tmp_path / "r.jpg")).astype(int)
    assert arr.shape == (20, 10, 3)
    assert arr[2, 5, 0] > 200 and arr[2, 5, 2] < 50  # top is the old left (red)
    assert arr[17, 5, 2] > 200 and arr[17, 5, 0] < 50


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name,content,reason", [
    ("zero.jpg", b"", "cannot identify"),
    ("text.jpg", b"hello, not an image", "cannot identify"),
    ("bomb.png", _png_header_only(20000, 20000), "decompression-bomb"),
])
def test_unreadable_files_raise_decode_error(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode_image(str(tmp_path / name))


def test_a_shard_path_at_the_wrong_offset_says_what_is_wrong_without_a_memory_address(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "t.png")
    size = (tmp_path / "t.png").stat().st_size
    (tmp_path / "s.tar").write_bytes(b"\0" * 512 + (tmp_path / "t.png").read_bytes())
    assert decode_image(f"{tmp_path}/s.tar@512:{size}").shape == (8, 8, 3)
    with pytest.raises(DecodeError) as info:
        decode_image(f"{tmp_path}/s.tar@513:{size - 1}")  # one byte off: no image starts there
    assert str(info.value) == "cannot identify image file (not an image, or a format PIL does not read)"


def test_truncated_and_missing(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(str(tmp_path / "t.jpg"))
    with pytest.raises(DecodeError, match="file not found"):
        decode_image(str(tmp_path / "none.jpg"))


def test_jpeg_draft_downscales_in_dct_domain_but_not_below_target(tmp_path):
    Image.new("RGB", (400, 300), (9, 99, 199)).save(tmp_path / "big.jpg")
    arr = decode_image(str(tmp_path / "big.jpg"), draft_px=100)
    assert arr.shape[:2] == (150, 200)  # scale 1/2: the largest DCT scale keeping the short side >= 100
    assert decode_image(str(tmp_path / "big.jpg")).shape[:2] == (300, 400)
