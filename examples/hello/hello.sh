#!/bin/sh
# Runs inside the container: shows where it runs and runs a 2-rank MPI job.
set -e
echo "hello from a container on $(cat /etc/hostname 2>/dev/null || hostname)"
echo "kernel: $(uname -r)"
mpirun --allow-run-as-root --oversubscribe -np 2 sh -c 'echo "MPI rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE"' | sort
echo "shared directory: $(ls -ld /bee/shared)"
