import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{proto,devices,endpoint,host-agent,cli,test,lab,bench}/**/*.test.ts'],
    exclude: ['dist/**', 'node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    setupFiles: ['test/run-dir.setup.ts'],
    // With CI=true a skipped test fails the run, named (test/ci-skips.ts).
    reporters: ['default', './test/ci-skips.ts'],
  },
});
