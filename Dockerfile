# syntax=docker/dockerfile:1
# Two images from one file: `api` (REST service and optuna-dashboard; no torch) and
# `worker` (a CUDA PyTorch base plus transformers/peft).

FROM python:3.11-slim AS api
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .
USER nobody
EXPOSE 8000 8080

FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime AS worker
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/data/hf HPO_CACHE_DIR=/data/hpo-cache
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install '.[worker]'
