// Imported first by the `pcinet` entry point, before anything can start the libuv thread pool.
// The host-agent's kernel channel keeps one pool thread per device waiting in read() on
// /dev/pcinet, and the default pool has 4 threads: with several devices, file I/O would starve.
process.env.UV_THREADPOOL_SIZE ??= '64';
