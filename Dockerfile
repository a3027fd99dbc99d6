# HNTS-MRG 2024 grand-challenge algorithm image for a trained vadice / nnU-Net model.
#
#   cp -r <Trainer__Plans__3d_fullres folder> model          # or: unzip model.zip -d model (vadice export-model)
#   docker build --build-arg TASK=1 -t vadice-hntsmrg-task1 .
#   docker run --rm --gpus all --network none --shm-size 2g \
#       -v $PWD/test/input:/input:ro -v $PWD/test/output:/output vadice-hntsmrg-task1
#
# The container reads /input/images/... and writes /output/images/mri-head-neck-segmentation/output.mha
# (docs/clinic.md). PyPI's torch wheel (pinned in constraints.txt) carries its own CUDA runtime, so a slim
# Python base image suffices; the host needs an NVIDIA driver and the NVIDIA container toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    nnUNet_raw=/tmp/nnUNet_raw \
    nnUNet_preprocessed=/tmp/nnUNet_preprocessed \
    nnUNet_results=/tmp/nnUNet_results \
    nnUNet_compile=f

RUN groupadd --system user && useradd --system --create-home --gid user user
WORKDIR /opt/algorithm

COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt . && vadice --version

ARG TASK=1
ARG MODEL=model
ENV VADICE_TASK=${TASK}
COPY --chown=user:user ${MODEL} /opt/algorithm/model

USER user
# Grand-challenge starts the container without arguments: the task comes from the build argument.
ENTRYPOINT ["sh", "-c", "exec vadice gc-predict --task \"$VADICE_TASK\" --model /opt/algorithm/model \"$@\"", "--"]
