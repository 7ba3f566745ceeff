// Workloads the block-device e2e tests share (NVMe, virtio-blk), as guest shell lines and what their
// output must show.

/** fio random writes of 4K–128K at iodepth 32 in two jobs over $disk, each block checked with
 *  crc32c after writing; prints fio's terse summary (version;fio;jobname;groupid;error). */
export const FIO_VERIFY =
  'fio --name=verify --filename=$disk --direct=1 --ioengine=libaio --rw=randwrite --bsrange=4k-128k ' +
  '--iodepth=32 --numjobs=2 --size=24M --offset_increment=48M --verify=crc32c --verify_fatal=1 ' +
  '--do_verify=1 --group_reporting --output-format=terse --terse-version=3 | cut -d";" -f1-5';

/** FIO_VERIFY's summary when every block verified (error 0). */
export const FIO_VERIFY_OK = /^3;fio-\S+;verify;0;0$/m;
