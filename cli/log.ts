// Logging for the command-line tools: pino, JSON to stderr, human-readable when stderr is a TTY.
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function makeLogger(level: LogLevel, name: string): Logger {
  const stream = process.stderr.isTTY
    ? pretty({
        destination: 2,
        colorize: true,
        ignore: 'pid,hostname',
        translateTime: 'HH:MM:ss.l',
        sync: true,
      })
    : pino.destination({ dest: 2, sync: true });
  return pino({ level, name, base: undefined }, stream);
}

export type { Logger };
