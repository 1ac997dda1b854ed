// Prints the module's size: source, minified (esbuild, a devDependency) and gzipped.
//   node clients/js/size.mjs
import { readFileSync } from 'node:fs';
import { gzipSync, brotliCompressSync } from 'node:zlib';

import { transform } from 'esbuild';

const source = readFileSync(new URL('./src/index.js', import.meta.url), 'utf8');
const { code } = await transform(source, { minify: true, format: 'esm', target: 'es2022' });
const kb = (n) => `${(n / 1024).toFixed(1)} KiB (${n} B)`;
console.log(`source            ${kb(Buffer.byteLength(source))}`);
console.log(`source, gzip      ${kb(gzipSync(source).length)}`);
console.log(`minified          ${kb(Buffer.byteLength(code))}`);
console.log(`minified, gzip    ${kb(gzipSync(code).length)}`);
console.log(`minified, brotli  ${kb(brotliCompressSync(code).length)}`);
