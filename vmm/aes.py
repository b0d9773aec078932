"""AES decryption (FIPS-197) in CBC mode, for secrets encrypted with another
secret as the key (-object secret,keyid=...,iv=...), as libvirt passes every
password it gives QEMU. Written from the standard; decryption only, since
kvmkit never encrypts. Speed does not matter: secrets are a few blocks long."""

from __future__ import annotations


def _xtime(b: int) -> int:
    return ((b << 1) ^ 0x1B) & 0xFF if b & 0x80 else b << 1


def _mul(a: int, b: int) -> int:
    """Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a, b = _xtime(a), b >> 1
    return out


def _sbox() -> tuple[list[int], list[int]]:
    """The S-box from its definition: the multiplicative inverse, then the affine map."""
    inverse = [0] * 256
    for a in range(1, 256):
        for b in range(1, 256):
            if _mul(a, b) == 1:
                inverse[a] = b
                break
    box = []
    for a in range(256):
        x, s = inverse[a], inverse[a]
        for _ in range(4):
            x = ((x << 1) | (x >> 7)) & 0xFF
            s ^= x
        box.append(s ^ 0x63)
    inv_box = [0] * 256
    for a, s in enumerate(box):
        inv_box[s] = a
    return box, inv_box


SBOX, INV_SBOX = _sbox()


def _expand_key(key: bytes) -> list[list[int]]:
    """The round keys, as 4-byte words (Nk = 4, 6 or 8 for 128, 192, 256 bits)."""
    nk = len(key) // 4
    rounds = nk + 6
    words = [list(key[4 * i:4 * i + 4]) for i in range(nk)]
    rcon = 1
    for i in range(nk, 4 * (rounds + 1)):
        temp = list(words[i - 1])
        if i % nk == 0:
            temp = [SBOX[b] for b in temp[1:] + temp[:1]]
            temp[0] ^= rcon
            rcon = _xtime(rcon)
        elif nk > 6 and i % nk == 4:
            temp = [SBOX[b] for b in temp]
        words.append([a ^ b for a, b in zip(words[i - nk], temp)])
    return words


def _decrypt_block(words: list[list[int]], block: bytes) -> bytes:
    rounds = len(words) // 4 - 1
    state = [list(block[4 * c:4 * c + 4]) for c in range(4)]      # columns

    def add_round_key(r: int) -> None:
        for c in range(4):
            for row in range(4):
                state[c][row] ^= words[4 * r + c][row]

    add_round_key(rounds)
    for r in range(rounds - 1, -1, -1):
        # inverse shift rows: row n moves right by n
        for row in range(1, 4):
            values = [state[c][row] for c in range(4)]
            for c in range(4):
                state[(c + row) % 4][row] = values[c]
        for c in range(4):
            state[c] = [INV_SBOX[b] for b in state[c]]
        add_round_key(r)
        if r:
            for c in range(4):                         # inverse mix columns
                a = state[c]
                state[c] = [_mul(a[0], 14) ^ _mul(a[1], 11) ^ _mul(a[2], 13) ^ _mul(a[3], 9),
                            _mul(a[0], 9) ^ _mul(a[1], 14) ^ _mul(a[2], 11) ^ _mul(a[3], 13),
                            _mul(a[0], 13) ^ _mul(a[1], 9) ^ _mul(a[2], 14) ^ _mul(a[3], 11),
                            _mul(a[0], 11) ^ _mul(a[1], 13) ^ _mul(a[2], 9) ^ _mul(a[3], 14)]
    return bytes(b for column in state for b in column)


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """``data`` (a whole number of 16-byte blocks) decrypted; padding is the caller's."""
    if len(key) not in (16, 24, 32) or len(iv) != 16 or len(data) % 16:
        raise ValueError("AES-CBC needs a 16, 24 or 32 byte key, a 16 byte IV and whole "
                         "blocks")
    words = _expand_key(key)
    out, previous = bytearray(), iv
    for at in range(0, len(data), 16):
        block = data[at:at + 16]
        out += bytes(a ^ b for a, b in zip(_decrypt_block(words, block), previous))
        previous = block
    return bytes(out)
