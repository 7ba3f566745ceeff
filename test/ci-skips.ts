// With CI=true a skipped test fails the run: on a CI machine every suite must run, so a skip is a
// missing package or a broken setup, never a pass (issue 15 item 5). A vitest reporter beside the
// default one: it collects skipped tests and, at the end, names them and sets a failing exit code.
import type { Reporter, TestCase, TestModule } from 'vitest/node';

export default class CiSkips implements Reporter {
  readonly #skipped: string[] = [];

  onTestCaseResult(test: TestCase): void {
    const state = test.result().state;
    if (state === 'skipped') this.#skipped.push(`${test.module.moduleId}: ${test.fullName}`);
  }

  onTestRunEnd(_modules: ReadonlyArray<TestModule>): void {
    if (process.env.CI !== 'true' || this.#skipped.length === 0) return;
    process.stderr.write(
      `\nCI=true: ${this.#skipped.length} test(s) skipped, which CI counts as failures (install what they need):\n` +
        this.#skipped.map((s) => `  ${s}\n`).join(''),
    );
    process.exitCode = 1;
  }
}
