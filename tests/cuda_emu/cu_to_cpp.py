#!/usr/bin/env python3
"""Turns one CUDA source of kernels/cuda/ into C++ the host compiler builds against the CUDA
emulator (tests/cuda_emu/device.h). Three rewrites, each on the lines it finds them, so that every
line keeps its number (a #line directive names the .cu file: compiler errors, ASan and UBSan
reports point into the original):
  kernel<T><<<grid, block, smem, stream>>>(args)  ->  ::cuda_emu::Launch(grid, block, smem, stream, "kernel<T>")(kernel<T>, args)
  extern __shared__ __align__(16) T name[];      ->  T* name = ::cuda_emu::dynamic_smem<T>(16);
  __shared__ T a[4][8], b;                        ->  static char a_emu_key; auto& a = ::cuda_emu::static_smem<T[4][8]>(&a_emu_key); (b likewise)
(the static key names the variable: each gets its place in the block's shared memory, runtime.cpp).
Everything else (__global__, threadIdx, the intrinsics) is the header's.
usage: cu_to_cpp.py IN.cu OUT.cpp
"""
import re
import sys


def callee_start(s, i):
    """Start of the kernel expression ending just before s[i] ('<<<'): an identifier path with
    template arguments, e.g. fp8::kernel<T, 4>."""
    j = i
    while True:
        while j > 0 and s[j - 1].isspace():
            j -= 1
        if j > 0 and s[j - 1] == '>':  # template arguments: skip to the matching '<'
            depth = 0
            while True:
                j -= 1
                if s[j] == '>':
                    depth += 1
                elif s[j] == '<':
                    depth -= 1
                    if depth == 0:
                        break
            continue
        k = j
        while k > 0 and (s[k - 1].isalnum() or s[k - 1] in '_:'):
            k -= 1
        if k == j:
            return j
        j = k
        if not (j > 0 and s[j - 1] == '>'):
            return j


def balanced(s, i, open_, close):
    """Index just past the bracket closing the one at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == open_:
            depth += 1
        elif s[j] == close:
            depth -= 1
            if depth == 0:
                return j + 1
    raise SystemExit(f"cu_to_cpp: unbalanced {open_}{close} at offset {i}")


def rewrite_launches(s):
    out, pos = [], 0
    while True:
        i = s.find('<<<', pos)
        if i < 0:
            out.append(s[pos:])
            return ''.join(out)
        start = callee_start(s, i)
        kernel = s[start:i].strip()
        j = s.index('>>>', i)
        config = s[i + 3:j]
        p = j + 3
        while s[p].isspace():
            p += 1
        if s[p] != '(':
            raise SystemExit(f"cu_to_cpp: a launch of {kernel} without arguments")
        end = balanced(s, p, '(', ')')
        args = s[p + 1:end - 1]
        name = ' '.join(kernel.split())
        # keep the newlines of the original text so that line numbers stay
        text = (f'::cuda_emu::Launch({config}, "{name}")({s[start:i]}' +
                (',' + args if args.strip() else '') + ')')
        out.append(s[pos:start])
        out.append(text)
        pos = end


SMEM = re.compile(r'extern\s+__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\[\];')


def rewrite_smem(s):
    return SMEM.sub(lambda m: f'{m.group(2)}* {m.group(3)} = ::cuda_emu::dynamic_smem<{m.group(2)}>'
                    f'({m.group(1) or 16});', s)


STATIC = re.compile(r'__shared__\s+(?:__align__\((\d+)\)\s+)?([^;]*);')
DECL = re.compile(r'^\s*(.*?)\s*(\w+)\s*((?:\[[^\]]*\])*)\s*$')


def rewrite_static_smem(s):
    def one(m):
        align = f', {m.group(1)}' if m.group(1) else ''
        decls = [DECL.match(p) for p in m.group(2).split(',')]
        # the type before the first name only: `T a[4], b;`
        if not all(decls) or not decls[0].group(1) or any(d.group(1) for d in decls[1:]):
            raise SystemExit(f'cu_to_cpp: a __shared__ declaration it cannot read: {m.group(0)}')
        type_ = decls[0].group(1)
        return ' '.join(f'static char {d.group(2)}_emu_key; auto& {d.group(2)} = '
                        f'::cuda_emu::static_smem<{type_}{d.group(3)}>(&{d.group(2)}_emu_key{align});'
                        for d in decls)
    return STATIC.sub(one, s)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    s = open(src).read()
    body = rewrite_static_smem(rewrite_smem(rewrite_launches(s)))
    if body.count('\n') != s.count('\n'):
        raise SystemExit('cu_to_cpp: the rewrite changed the line count')
    with open(dst, 'w') as f:
        f.write('#include "tests/cuda_emu/device.h"\n')
        f.write(f'#line 1 "{src}"\n')
        f.write(body)


main()
