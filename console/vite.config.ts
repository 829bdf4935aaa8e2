// The console is built into the Python package (api/console_dist/) so that `pip install .` ships
// it and api/console.py serves it at /ai/console/. Asset names carry a content hash, which lets
// the gateway cache them for a year while index.html is revalidated on every load.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/ai/console/',
  build: {
    outDir: '../api/console_dist',
    emptyOutDir: true,
    target: 'es2020',
    // One entry chunk: no preload polyfill is needed, and nothing is inlined into index.html, so the
    // page runs under a strict Content-Security-Policy (script-src 'self').
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: false,
  },
  server: {
    // `npm run dev` serves the console from Vite and sends the API calls to a local gateway.
    proxy: {
      '/ai/v1': process.env.REACTOR_URL ?? 'http://127.0.0.1:8004',
      '/auth/v1': process.env.REACTOR_URL ?? 'http://127.0.0.1:8004',
    },
  },
});
